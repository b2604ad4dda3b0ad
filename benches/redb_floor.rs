//! The floor under the store: one redb insert per commit, durable and not, so the cost of a
//! commit can be split into its fsync and its CPU work. Run with `cargo bench --bench redb_floor`.

use std::time::Instant;

use redb::{Database, Durability, TableDefinition};

const T: TableDefinition<&[u8], &[u8]> = TableDefinition::new("t");

fn run(db: &Database, durability: Durability, n: usize, offset: usize) -> f64 {
    let started = Instant::now();
    for i in 0..n {
        let mut txn = db.begin_write().expect("begin");
        txn.set_durability(durability).expect("durability");
        {
            let mut t = txn.open_table(T).expect("table");
            let key = format!("user\x1fb{:09}\0user.b{:09}", i + offset, i + offset);
            t.insert(
                key.as_bytes(),
                &b"\x01\0\0\0\x10backend1!defaultowner\tlrswipkxtecda\t"[..],
            )
            .expect("insert");
        }
        txn.commit().expect("commit");
    }
    started.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::create(dir.path().join("floor.redb")).expect("create");
    let immediate = run(&db, Durability::Immediate, 3000, 0);
    let none = run(&db, Durability::None, 3000, 3000);
    println!("one insert per commit: Immediate {immediate:.1} us, None {none:.1} us");
}
