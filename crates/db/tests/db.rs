//! Connecting, migrating and the portable column types on both backends.

mod support;

use std::time::Duration;

use palisade_db::{Backend, Db, DbConfig, Error, Migrations, Scope, ServiceRole};
use sqlx::Row;
use support::{migrations, on_each_backend, postgres_url, random_schema};
use uuid::Uuid;

#[tokio::test]
async fn migrates_idempotently_and_round_trips_portable_types() {
    on_each_backend(|db| async move {
        // Running again (as every restart does) must be a no-op.
        db.migrate(&migrations()).await.expect("second migrate");
        db.ping().await.expect("ping");

        let id = Uuid::now_v7().to_string();
        let mut tx = db.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO widgets (id, name, data, created_at, active) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id.as_str())
        .bind("gear")
        .bind(&[0u8, 159, 255][..])
        .bind(1_700_000_000_000_000i64)
        .bind(true)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();

        // Booleans bind as `bool` on both backends but read back through CAST: SQLite stores
        // them as INTEGER, which the Any driver will not decode as `bool`.
        let row = sqlx::query(
            "SELECT name, data, created_at, CAST(active AS INTEGER) AS active \
             FROM widgets WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!(row.get::<String, _>("name"), "gear");
        assert_eq!(row.get::<Vec<u8>, _>("data"), vec![0, 159, 255]);
        assert_eq!(row.get::<i64, _>("created_at"), 1_700_000_000_000_000);
        assert_eq!(row.get::<i64, _>("active"), 1);
        assert_eq!(support::depth(&db).await, 0);
    })
    .await;
}

#[tokio::test]
async fn concurrent_read_then_write_transactions_all_commit() {
    on_each_backend(|db| async move {
        // Read-then-write is the shape that fails with SQLITE_BUSY under deferred transactions.
        let writers = (0..16).map(|n| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut tx = db.begin().await?;
                let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM widgets")
                    .fetch_one(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO widgets (id, name, data, created_at, active) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(Uuid::now_v7().to_string())
                .bind(format!("w{n}"))
                .bind(Vec::<u8>::new())
                .bind(count)
                .bind(false)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok::<_, palisade_db::Error>(())
            })
        });
        for writer in writers.collect::<Vec<_>>() {
            writer.await.unwrap().expect("writer commits");
        }
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM widgets")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(total, 16);
    })
    .await;
}

#[tokio::test]
async fn sqlite_creates_its_directory_and_applies_pragmas() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("nested").join("data");
    let db = Db::connect(&DbConfig::sqlite_in(&data_dir, "identity"))
        .await
        .unwrap();
    assert_eq!(db.backend(), Backend::Sqlite);
    assert!(data_dir.join("identity.db").is_file());
    #[cfg(unix)]
    for made in [&data_dir, &dir.path().join("nested")] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(made).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{}", made.display());
    }

    let mut conn = db.pool().acquire().await.unwrap();
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let busy_timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(journal, "wal");
    assert_eq!(synchronous, 1, "NORMAL");
    assert_eq!(foreign_keys, 1);
    assert_eq!(busy_timeout, 5000);
    // A write, so SQLite has made its `-wal` and `-shm` files too: all the owner's alone.
    sqlx::query("CREATE TABLE written (id INTEGER)")
        .execute(&mut *conn)
        .await
        .unwrap();
    #[cfg(unix)]
    for file in ["identity.db", "identity.db-wal", "identity.db-shm"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data_dir.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    drop(conn);
    db.close().await;
}

#[tokio::test]
async fn postgres_schemas_isolate_services_sharing_a_database() {
    let Some(url) = postgres_url() else { return };
    let (schema_a, schema_b) = (random_schema(), random_schema());
    let a = Db::connect(&DbConfig::postgres(&url, Some(schema_a.clone())))
        .await
        .unwrap();
    let b = Db::connect(&DbConfig::postgres(&url, Some(schema_b)))
        .await
        .unwrap();
    assert_eq!(a.backend(), Backend::Postgres);
    a.migrate(&migrations()).await.unwrap();
    b.migrate(&migrations()).await.unwrap();

    support::enqueue_committed(&a, "audit", "a", 3).await;
    assert_eq!(support::depth(&a).await, 3);
    assert_eq!(support::depth(&b).await, 0);
    let current: String = sqlx::query_scalar("SELECT current_schema()::text")
        .fetch_one(a.pool())
        .await
        .unwrap();
    assert_eq!(current, schema_a);

    for db in [a, b] {
        db.drop_schema().await.unwrap();
        db.close().await;
    }
}

#[tokio::test]
async fn a_database_that_must_exist_is_found_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let sqlite = DbConfig::sqlite_in(&data_dir, "identity");
    let err = Db::connect(&sqlite.clone().existing()).await.unwrap_err();
    assert!(matches!(err, Error::Missing(_)), "{err}");
    assert!(
        !data_dir.exists(),
        "neither the file nor its directory is created"
    );
    Db::connect(&sqlite).await.unwrap().close().await;
    Db::connect(&sqlite.existing()).await.unwrap().close().await;

    let Some(url) = postgres_url() else { return };
    let schema = random_schema();
    let postgres = DbConfig::postgres(&url, Some(schema.clone()));
    let err = Db::connect(&postgres.clone().existing()).await.unwrap_err();
    assert!(matches!(err, Error::Missing(_)), "{err}");
    let catalog = Db::connect(&DbConfig::postgres(&url, None)).await.unwrap();
    let schemas: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM pg_catalog.pg_namespace WHERE nspname = $1")
            .bind(&schema)
            .fetch_one(catalog.pool())
            .await
            .unwrap();
    assert_eq!(schemas, 0, "the schema was created");
    catalog.close().await;
    Db::connect(&postgres).await.unwrap().close().await;
    let existing = Db::connect(&postgres.existing()).await.unwrap();
    existing.drop_schema().await.unwrap();
    existing.close().await;
}

#[tokio::test]
async fn rejects_unknown_schemes_and_unsafe_schema_names() {
    let err = Db::connect(&DbConfig::postgres("mysql://root@localhost/x", None))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unsupported"), "{err}");
    let err = Db::connect(&DbConfig::postgres(
        "postgres://postgres@127.0.0.1:1/x",
        Some("a\"; DROP".to_owned()),
    ))
    .await
    .unwrap_err();
    assert!(err.to_string().contains("invalid schema name"), "{err}");
}

#[tokio::test]
async fn a_single_write_on_sqlite_waits_for_the_writer_holding_no_reader_connection() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&DbConfig::sqlite_in(dir.path(), "svc"))
        .await
        .unwrap();
    db.migrate(&migrations()).await.unwrap();
    let id = Uuid::now_v7().to_string();
    let mut tx = db.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO widgets (id, name, data, created_at, active) VALUES ($1, 'gear', $2, 0, true)",
    )
    .bind(id.as_str())
    .bind(Vec::<u8>::new())
    .execute(&mut *tx)
    .await
    .unwrap();
    let rename = tokio::spawn({
        let (db, id) = (db.clone(), id.clone());
        async move {
            sqlx::query("UPDATE widgets SET name = 'cog' WHERE id = $1")
                .bind(id.as_str())
                .execute(db.single_write())
                .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !rename.is_finished(),
        "the writer is still in a transaction"
    );
    // Waiting in the writer's queue, not in SQLite's busy handler on a pooled connection.
    assert_eq!(db.pool().num_idle() as u32, db.pool().size());
    tx.commit().await.unwrap();
    let renamed = rename.await.unwrap().unwrap();
    assert_eq!(renamed.rows_affected(), 1);
    db.close().await;
}

/// Migrations run as the service's own role, which row-level security binds, and still reach
/// every tenant's rows: a data migration on a tenant table changes them all.
#[tokio::test]
async fn postgres_data_migrations_reach_every_tenants_rows() {
    let Some(url) = postgres_url() else { return };
    let admin = Db::connect(&DbConfig::postgres(&url, None)).await.unwrap();
    let role_name = format!("palisade_svc_{}", Uuid::new_v4().simple());
    let (role, role_url) = ServiceRole::create(&admin, &url, &role_name).await.unwrap();
    // Everything that can fail runs before the cleanup, which runs whatever happened, so a
    // failing run leaves no role or schema behind.
    let schema = random_schema();
    let migrated_bodies = async {
        let db = Db::connect(&DbConfig::postgres(&role_url, Some(schema.clone()))).await?;
        let bypasses = db.bypasses_row_security().await?;
        let migrations = Migrations {
            sqlite: sqlx::migrate!("tests/migrations/sqlite"),
            postgres: sqlx::migrate!("tests/migrations/postgres_rls"),
        };
        db.migrate(&migrations).await?;
        let mut tx = db.read_in(Scope::AllTenants).await?;
        let bodies: Vec<String> = sqlx::query_scalar("SELECT body FROM notes ORDER BY tenant_id")
            .fetch_all(&mut *tx)
            .await?;
        tx.rollback().await?;
        db.close().await;
        Ok::<_, palisade_db::Error>((bypasses, bodies))
    }
    .await;
    let drop_schema = format!(r#"DROP SCHEMA IF EXISTS "{schema}" CASCADE"#);
    sqlx::query(sqlx::AssertSqlSafe(drop_schema))
        .execute(admin.pool())
        .await
        .unwrap();
    role.drop(&admin).await.unwrap();
    admin.close().await;
    let (bypasses, bodies) = migrated_bodies.unwrap();
    assert!(!bypasses, "the service role is bound by row-level security");
    assert_eq!(bodies, ["HELLO", "WORLD"]);
}

/// A migration that fails leaves no lock behind. sqlx holds a session-level advisory lock
/// while it migrates (one per database, whatever the schema) and lets it go only on success,
/// so the failed run's pooled connection would keep every later migration in the database
/// waiting: a retry's, another replica's, another service's.
#[tokio::test]
async fn a_failed_postgres_migration_leaves_no_lock_behind() {
    let Some(url) = postgres_url() else { return };
    let broken = Db::connect(&DbConfig::postgres(&url, Some(random_schema())))
        .await
        .unwrap();
    let failing = Migrations {
        sqlite: sqlx::migrate!("tests/migrations/sqlite"),
        postgres: sqlx::migrate!("tests/migrations/postgres_broken"),
    };
    let failed = broken.migrate(&failing).await;
    let other = Db::connect(&DbConfig::postgres(&url, Some(random_schema())))
        .await
        .unwrap();
    let waited = Duration::from_secs(10);
    let migrated = tokio::time::timeout(waited, other.migrate(&migrations())).await;
    for db in [broken, other] {
        db.drop_schema().await.unwrap();
        db.close().await;
    }
    assert!(failed.is_err(), "the broken migration fails");
    assert!(
        matches!(migrated, Ok(Ok(()))),
        "the next migration ran: {migrated:?}"
    );
}
