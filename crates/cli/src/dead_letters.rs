//! `palisade dead-letters`: list the outbox messages a component's sink rejected on their own
//! (say, audit events compliance found malformed), or put them back in the outbox once the
//! sink takes them. Works on the component's database directly, running or not.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use palisade::Component;
use palisade_db::{Db, outbox};

use crate::serve::DatabaseArgs;

#[derive(Args)]
pub struct DeadLetterArgs {
    /// The component whose outbox to look at: identity.
    component: String,
    /// Only this topic (e.g. `audit`); every topic by default.
    #[arg(long)]
    topic: Option<String>,
    /// Put them back in the outbox (attempts reset) rather than list them.
    #[arg(long)]
    requeue: bool,
    #[command(flatten)]
    database: DatabaseArgs,
}

pub async fn run(args: DeadLetterArgs) -> anyhow::Result<()> {
    let component = Component::parse(&args.component)?;
    if component != Component::Identity {
        bail!("{} keeps no outbox", component.name());
    }
    // Not created when missing: a mistyped --data-dir or schema is an error, not a new,
    // empty database.
    let db = Db::connect(&args.database.config(component).existing())
        .await
        .with_context(|| {
            format!(
                "opening {}'s database (pass its --data-dir, or its --database-url and --database-schema)",
                component.name()
            )
        })?;
    let topic = args.topic.as_deref();
    let done = if args.requeue {
        requeue(&db, component, topic).await
    } else {
        list(&db, component, topic).await
    };
    db.close().await;
    done
}

async fn list(db: &Db, component: Component, topic: Option<&str>) -> anyhow::Result<()> {
    let letters = outbox::dead_letters(db, topic).await?;
    for letter in &letters {
        let message = &letter.message;
        println!(
            "{} {} created {} attempts {} set aside {}: {}",
            message.topic,
            message.id,
            timestamp(message.created_at_micros),
            message.attempts,
            timestamp(letter.dead_at_micros),
            letter.reason
        );
    }
    println!(
        "{} dead letter(s) in {}'s outbox{}",
        letters.len(),
        component.name(),
        if letters.is_empty() {
            ""
        } else {
            "; once the sink takes them, put them back with --requeue"
        }
    );
    Ok(())
}

async fn requeue(db: &Db, component: Component, topic: Option<&str>) -> anyhow::Result<()> {
    let requeued = outbox::requeue_dead_letters(db, topic).await?;
    println!(
        "{requeued} dead letter(s) back in {}'s outbox; a running relay ships them within its poll interval",
        component.name()
    );
    Ok(())
}

fn timestamp(micros: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0));
    humantime::format_rfc3339_micros(at).to_string()
}
