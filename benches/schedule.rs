//! Scheduling benchmark: 10,000 posts due within the same 10 minutes on three `tollgate serve`
//! instances sharing PostgreSQL, publishing to a fake X; one instance SIGKILLed halfway. Prints
//! the lateness of each post at X after its effective time (p50, p99, max), duplicates, posts
//! lost, and whether the money and the ledger are exact; exits 1 when p99 > 5 s or any post is
//! duplicated or lost.
//!
//! Run: `BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench --bench
//! schedule` (`TEST_DATABASE_URL` works too). Knobs: `BENCH_POSTS` (10000), `BENCH_WINDOW_S`
//! (600), `BENCH_INSTANCES` (3), `BENCH_KILL` (1), `BENCH_PLATFORM_MS` (100: how long the fake X
//! takes to answer, so that posts are in flight when the instance dies), `BENCH_GATEWAY_BIN`
//! (another build).

#[path = "common/scheduling.rs"]
mod scheduling;

fn knob(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let Some(database_url) = ["BENCH_DATABASE_URL", "TEST_DATABASE_URL"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
    else {
        eprintln!("set BENCH_DATABASE_URL (a PostgreSQL server) to run the scheduling benchmark");
        std::process::exit(2);
    };
    let bin = std::env::var("BENCH_GATEWAY_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_tollgate").to_owned());
    let params = scheduling::Params {
        posts: knob("BENCH_POSTS", 10_000) as usize,
        window_ms: knob("BENCH_WINDOW_S", 600) * 1000,
        instances: knob("BENCH_INSTANCES", 3) as usize,
        kill: knob("BENCH_KILL", 1) != 0,
        database_url,
        bin,
        env: Vec::new(),
        platform_ms: knob("BENCH_PLATFORM_MS", 100) as u64,
    };
    println!(
        "scheduling {} posts due within {} s on {} instances{}",
        params.posts,
        params.window_ms / 1000,
        params.instances,
        if params.kill {
            ", one SIGKILLed halfway"
        } else {
            ""
        }
    );
    let report = scheduling::run(params).await;
    println!("{}", report.line());
    if !report.ledger_ok {
        println!("{}", report.ledger_output);
    }
    let ok = report.quantile(0.99) <= 5_000
        && report.duplicates == 0
        && report.lost == 0
        && report.money_ok
        && report.ledger_ok;
    if !ok {
        println!("FAILED: the targets are p99 <= 5 s, 0 duplicates, 0 lost, exact money");
        std::process::exit(1);
    }
}
