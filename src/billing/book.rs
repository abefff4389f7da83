//! Where reservations are held: [`Book::Memory`] on SQLite, [`Book::Database`] on PostgreSQL.
//!
//! SQLite is the single-process, embedded deployment, so this process sees every balance
//! change: balances live in memory (loaded at start, kept in step with every write), a
//! reservation is a memory update with no database round trip, and a settlement is one
//! database round trip whose charge is decided here. Nothing about a reservation is persisted,
//! so a crash cannot leave one held. On PostgreSQL several instances share balances, so a
//! reservation is an atomic row update plus a reservation row with an expiry (the reconciler
//! releases what a crashed instance left).

use super::Micros;
use crate::db::billing::{NewReservation, ReserveError, Settled, UsageRecord};
use crate::db::users::{AdjustError, LedgerEntry};
use crate::db::{self, Db};
use std::collections::HashMap;
use std::sync::Mutex;

/// One user's balance and what is held of it, in micro-credits.
#[derive(Debug, Clone, Copy, Default)]
pub struct Account {
    balance: i64,
    reserved: i64,
}

/// The reservation book.
pub enum Book {
    Memory(Mutex<HashMap<i64, Account>>),
    Database,
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
    /// The book for `db`: in memory (loaded from the database) on SQLite.
    pub async fn open(db: &Db) -> Result<Book, sqlx::Error> {
        match db {
            Db::Postgres(_) => Ok(Book::Database),
            Db::Sqlite { .. } => {
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
                Ok(Book::Memory(Mutex::new(accounts)))
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
        if let Book::Memory(accounts) = self {
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
        match self {
            Book::Memory(accounts) => Some(Book::with_accounts(accounts, |a| {
                a.get(&user_id).map_or(0, |x| x.reserved)
            })),
            Book::Database => None,
        }
    }

    /// Holds `r.amount` of the user's spendable balance, or says how much is available.
    pub async fn reserve(&self, db: &Db, r: &NewReservation<'_>) -> Result<Held, ReserveError> {
        match self {
            Book::Database => {
                let id = db::billing::reserve(db, r).await?;
                Ok(Held {
                    user_id: r.user_id,
                    amount: r.amount,
                    reservation_id: Some(id),
                })
            }
            Book::Memory(accounts) => Book::with_accounts(accounts, |a| {
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
        match self {
            Book::Database => {
                db::billing::settle(db, held.and_then(|h| h.reservation_id), record).await
            }
            Book::Memory(accounts) => {
                let charged = Book::with_accounts(accounts, |a| {
                    let account = a.entry(record.user_id).or_default();
                    if let Some(h) = held {
                        account.reserved -= h.amount.0;
                    }
                    let charged = record
                        .cost
                        .0
                        .min((account.balance - account.reserved).max(0));
                    account.balance -= charged;
                    charged
                });
                let result = db::billing::settle_decided(db, Micros(charged), record).await;
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

    /// Gives a settlement attempt's hold back without charging, so it can be retried.
    pub fn hold_again(&self, held: Option<Held>) {
        if let (Book::Memory(accounts), Some(h)) = (self, held) {
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
        let Book::Memory(accounts) = self else {
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
