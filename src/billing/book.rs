//! Where reservations are held: in memory on SQLite, in the database on PostgreSQL.
//!
//! SQLite is the single-process, embedded deployment, so this process sees every balance
//! change: balances live in memory (loaded at start, kept in step with every write), a
//! reservation is a memory update with no database round trip, and a settlement is one
//! database round trip whose charge is decided here. Nothing about a reservation is persisted,
//! so a crash cannot leave one held. On PostgreSQL several instances share balances, so a
//! reservation is an atomic row update plus a reservation row with an expiry (the reconciler
//! releases what a crashed instance left).
//!
//! SQLite settlements are written by one writer task that commits whatever has queued up in one
//! transaction (group commit), so concurrent requests share one round trip and one commit.

use super::Micros;
use crate::db::billing::{Decided, NewReservation, ReserveError, Settled, UsageRecord};
use crate::db::users::{AdjustError, LedgerEntry};
use crate::db::{self, Db};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use tokio::sync::{mpsc, oneshot};

/// Settlements committed together at most.
use crate::db::billing::MAX_BATCH;

/// A decided settlement and where to say whether it was written (`true`), already written
/// before (`false`), or failed.
type Job = (Decided, oneshot::Sender<Result<bool, sqlx::Error>>);

/// One user's balance and what is held of it, in micro-credits.
#[derive(Debug, Clone, Copy, Default)]
pub struct Account {
    balance: i64,
    reserved: i64,
}

/// The reservation book, and how many reservations this process holds (so a shutdown can tell
/// whether every admitted request was settled).
pub struct Book {
    store: Store,
    open: AtomicI64,
}

enum Store {
    Memory {
        accounts: Mutex<HashMap<i64, Account>>,
        writes: mpsc::Sender<Job>,
        /// Held for the process's lifetime: no second process may keep balances of this file.
        _lock: Option<std::fs::File>,
    },
    Database,
}

/// The SQLite settlement writer: commits queued settlements in batches; if a batch fails, its
/// members are written one by one so that only the faulty one fails.
async fn write_settlements(db: Db, mut rx: mpsc::Receiver<Job>) {
    let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let (decided, replies): (Vec<Decided>, Vec<_>) = jobs.drain(..).unzip();
        if decided.len() > 1 && db::billing::settle_decided(&db, &decided).await.is_ok() {
            for reply in replies {
                let _ = reply.send(Ok(true));
            }
            continue;
        }
        for (one, reply) in decided.iter().zip(replies) {
            let result = match db::billing::settle_decided(&db, std::slice::from_ref(one)).await {
                Ok(()) => Ok(true),
                Err(e) if db::is_unique_violation(&e) => Ok(false),
                Err(e) => Err(e),
            };
            let _ = reply.send(result);
        }
    }
}

/// A reservation held for one request.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    pub user_id: i64,
    pub amount: Micros,
    /// The reservation row, on PostgreSQL.
    pub reservation_id: Option<i64>,
}

impl Book {
    /// The book for `db`: in memory (loaded from the database) on SQLite, where it also takes
    /// an exclusive lock beside the database file.
    pub async fn open(db: &Db) -> anyhow::Result<Book> {
        let store = Book::open_store(db).await?;
        Ok(Book {
            store,
            open: AtomicI64::new(0),
        })
    }

    /// Reservations this process took and has not settled yet.
    pub fn open_reservations(&self) -> i64 {
        self.open.load(Ordering::Acquire)
    }

    async fn open_store(db: &Db) -> anyhow::Result<Store> {
        match db {
            Db::Postgres(_) => Ok(Store::Database),
            Db::Sqlite { writer, .. } => {
                let file = writer.connect_options().get_filename().to_path_buf();
                let lock = if file.as_os_str().is_empty()
                    || file.to_string_lossy().contains(":memory:")
                {
                    None
                } else {
                    let path = file.with_extension("lock");
                    db::create_private(&path)?;
                    let lock = std::fs::OpenOptions::new().write(true).open(&path)?;
                    lock.try_lock().map_err(|_| {
                        anyhow::anyhow!(
                            "another Tollgate process is serving {}; one SQLite database serves one process \
                             (run several instances on PostgreSQL)",
                            file.display()
                        )
                    })?;
                    Some(lock)
                };
                let accounts = db::billing::all_balances(db)
                    .await?
                    .into_iter()
                    .map(|(id, balance)| {
                        (
                            id,
                            Account {
                                balance,
                                reserved: 0,
                            },
                        )
                    })
                    .collect();
                let (writes, rx) = mpsc::channel(4 * MAX_BATCH);
                tokio::spawn(write_settlements(db.clone(), rx));
                Ok(Store::Memory {
                    accounts: Mutex::new(accounts),
                    writes,
                    _lock: lock,
                })
            }
        }
    }

    fn with_accounts<T>(
        accounts: &Mutex<HashMap<i64, Account>>,
        f: impl FnOnce(&mut HashMap<i64, Account>) -> T,
    ) -> T {
        let mut guard = accounts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }

    /// Records a new user's starting balance (call after the user row is committed).
    pub fn open_account(&self, user_id: i64, balance: Micros) {
        if let Store::Memory { accounts, .. } = &self.store {
            Book::with_accounts(accounts, |a| {
                a.insert(
                    user_id,
                    Account {
                        balance: balance.0,
                        reserved: 0,
                    },
                );
            });
        }
    }

    /// Micro-credits held for requests in flight, where the book knows it better than the
    /// database (`None`: read `users.reserved_micros`).
    pub fn reserved(&self, user_id: i64) -> Option<i64> {
        match &self.store {
            Store::Memory { accounts, .. } => Some(Book::with_accounts(accounts, |a| {
                a.get(&user_id).map_or(0, |x| x.reserved)
            })),
            Store::Database => None,
        }
    }

    /// Holds `r.amount` of the user's spendable balance, or says how much is available.
    pub async fn reserve(&self, db: &Db, r: &NewReservation<'_>) -> Result<Held, ReserveError> {
        let held = self.reserve_in_store(db, r).await?;
        self.open.fetch_add(1, Ordering::AcqRel);
        Ok(held)
    }

    async fn reserve_in_store(
        &self,
        db: &Db,
        r: &NewReservation<'_>,
    ) -> Result<Held, ReserveError> {
        match &self.store {
            Store::Database => {
                let id = db::billing::reserve(db, r).await?;
                Ok(Held {
                    user_id: r.user_id,
                    amount: r.amount,
                    reservation_id: Some(id),
                })
            }
            Store::Memory { accounts, .. } => Book::with_accounts(accounts, |a| {
                let account = a.get_mut(&r.user_id).ok_or(ReserveError::UserInactive)?;
                let available = account.balance - account.reserved;
                if available < r.amount.0 {
                    return Err(ReserveError::Insufficient {
                        needed: r.amount,
                        available: Micros(available),
                    });
                }
                account.reserved += r.amount.0;
                Ok(Held {
                    user_id: r.user_id,
                    amount: r.amount,
                    reservation_id: None,
                })
            }),
        }
    }

    /// Releases `held` (if any), charges `record.cost` (at most what the user has) and writes
    /// the ledger row and usage record.
    pub async fn settle(
        &self,
        db: &Db,
        held: Option<Held>,
        record: &UsageRecord,
    ) -> Result<Settled, sqlx::Error> {
        let result = self.settle_in_store(db, held, record).await;
        if held.is_some() && result.is_ok() {
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
        result
    }

    async fn settle_in_store(
        &self,
        db: &Db,
        held: Option<Held>,
        record: &UsageRecord,
    ) -> Result<Settled, sqlx::Error> {
        match &self.store {
            Store::Database => {
                db::billing::settle(db, held.and_then(|h| h.reservation_id), record).await
            }
            Store::Memory {
                accounts, writes, ..
            } => {
                let charged = Book::with_accounts(accounts, |a| {
                    let account = a.entry(record.user_id).or_default();
                    if let Some(h) = held {
                        account.reserved -= h.amount.0;
                    }
                    let charged = record.chargeable(account.balance - account.reserved);
                    account.balance -= charged;
                    charged
                });
                let (reply, written) = oneshot::channel();
                let decided = Decided {
                    charged: Micros(charged),
                    record: record.clone(),
                };
                let result = match writes.send((decided, reply)).await {
                    Ok(()) => written.await.unwrap_or(Err(sqlx::Error::PoolClosed)),
                    Err(_) => Err(sqlx::Error::PoolClosed),
                };
                let result = result.map(|first_time| Settled {
                    charged: Micros(if first_time { charged } else { 0 }),
                    first_time,
                });
                if !matches!(
                    result,
                    Ok(Settled {
                        first_time: true,
                        ..
                    })
                ) {
                    // Not written (or written before): give the memory debit back.
                    Book::with_accounts(accounts, |a| {
                        a.entry(record.user_id).or_default().balance += charged
                    });
                }
                result
            }
        }
    }

    /// Before a durable debit (a video task's hold) is written: on SQLite takes `amount` from
    /// the spendable balance in memory, or says what is available; on PostgreSQL the database
    /// checks (nothing to do here).
    pub fn take(&self, user_id: i64, amount: Micros) -> Result<(), ReserveError> {
        let Store::Memory { accounts, .. } = &self.store else {
            return Ok(());
        };
        Book::with_accounts(accounts, |a| {
            let account = a.get_mut(&user_id).ok_or(ReserveError::UserInactive)?;
            let available = account.balance - account.reserved;
            if available < amount.0 {
                return Err(ReserveError::Insufficient {
                    needed: amount,
                    available: Micros(available),
                });
            }
            account.balance -= amount.0;
            Ok(())
        })
    }

    /// Adds `amount` to a balance in memory (SQLite) after the database gained it, or after a
    /// [`Book::take`] whose write failed.
    pub fn give(&self, user_id: i64, amount: Micros) {
        if let Store::Memory { accounts, .. } = &self.store {
            Book::with_accounts(accounts, |a| {
                a.entry(user_id).or_default().balance += amount.0
            });
        }
    }

    /// Gives a settlement attempt's hold back without charging, so it can be retried.
    pub fn hold_again(&self, held: Option<Held>) {
        if let (Store::Memory { accounts, .. }, Some(h)) = (&self.store, held) {
            Book::with_accounts(accounts, |a| {
                a.entry(h.user_id).or_default().reserved += h.amount.0
            });
        }
    }

    /// An admin credit or debit; a debit may not take the balance below what is reserved.
    pub async fn adjust(
        &self,
        db: &Db,
        user_id: i64,
        delta: Micros,
        reason: &str,
    ) -> Result<LedgerEntry, AdjustError> {
        let Store::Memory { accounts, .. } = &self.store else {
            return db::users::adjust_balance(db, user_id, delta, reason).await;
        };
        // Debits are taken from memory first, so no reservation can spend them meanwhile.
        if delta.0 < 0 {
            Book::with_accounts(accounts, |a| {
                let account = a.get_mut(&user_id).ok_or(AdjustError::NotFound)?;
                let available = account.balance - account.reserved;
                if available + delta.0 < 0 {
                    return Err(AdjustError::WouldGoNegative {
                        available: Micros(available),
                    });
                }
                account.balance += delta.0;
                Ok(())
            })?;
        }
        let result = db::users::adjust_balance(db, user_id, delta, reason).await;
        Book::with_accounts(accounts, |a| {
            let account = a.entry(user_id).or_default();
            match (&result, delta.0 < 0) {
                (Ok(_), false) => account.balance += delta.0,
                (Err(_), true) => account.balance -= delta.0,
                _ => {}
            }
        });
        result
    }
}
