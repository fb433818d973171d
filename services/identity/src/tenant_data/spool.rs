//! Where an import's batches wait between being checked and being written. An import reads
//! and checks its whole stream before it opens its transaction, so that a slow sender never
//! holds the write lock and a bad stream writes nothing. Holding what it read in memory would
//! make a restore cost the tenant's size in memory, and a few at once could exhaust it, so
//! the batches go, as they arrived, to an anonymous temporary file (in the system's temporary
//! directory, `TMPDIR`; unlinked from the start, so nothing is left behind however the import
//! ends) and are read back one at a time when the import writes them.

use std::io::{self, SeekFrom};

use palisade_proto::palisade::identity::v1::TenantDataBatch;
use prost::Message;
use tokio::{
    fs::File,
    io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufReader, BufWriter},
};

/// Batches spooled to disk, each with its chunk number in the stream.
pub struct Spool {
    file: BufWriter<File>,
    batches: usize,
    bytes: u64,
}

impl Spool {
    pub async fn new() -> io::Result<Spool> {
        let file = tokio::task::spawn_blocking(tempfile::tempfile)
            .await
            .map_err(io::Error::other)??;
        Ok(Spool {
            file: BufWriter::new(File::from_std(file)),
            batches: 0,
            bytes: 0,
        })
    }

    /// How much the spooled batches take on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Adds `batch`, chunk number `chunk` of the stream.
    pub async fn push(&mut self, chunk: usize, batch: &TenantDataBatch) -> io::Result<()> {
        let encoded = batch.encode_to_vec();
        let length = u32::try_from(encoded.len()).map_err(io::Error::other)?;
        self.file.write_u64_le(chunk as u64).await?;
        self.file.write_u32_le(length).await?;
        self.file.write_all(&encoded).await?;
        self.batches += 1;
        self.bytes += 12 + u64::from(length);
        Ok(())
    }

    /// The spooled batches, from the first.
    pub async fn replay(mut self) -> io::Result<Replay> {
        self.file.flush().await?;
        let mut file = self.file.into_inner();
        file.seek(SeekFrom::Start(0)).await?;
        Ok(Replay {
            file: BufReader::new(file),
            remaining: self.batches,
        })
    }
}

/// Reads a [`Spool`]'s batches back in the order they were pushed.
pub struct Replay {
    file: BufReader<File>,
    remaining: usize,
}

impl Replay {
    /// The next batch and its chunk number, or `None` after the last.
    pub async fn next(&mut self) -> io::Result<Option<(usize, TenantDataBatch)>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let chunk = usize::try_from(self.file.read_u64_le().await?).map_err(io::Error::other)?;
        let mut encoded = vec![0; self.file.read_u32_le().await? as usize];
        self.file.read_exact(&mut encoded).await?;
        let batch = TenantDataBatch::decode(encoded.as_slice())
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        self.remaining -= 1;
        Ok(Some((chunk, batch)))
    }
}

#[cfg(test)]
mod tests {
    use palisade_proto::palisade::identity::v1::{
        ExportedRole, TenantDataRecord, tenant_data_record::Record,
    };

    use super::*;

    fn batch(roles: &[&str]) -> TenantDataBatch {
        let records = roles
            .iter()
            .map(|id| TenantDataRecord {
                record: Some(Record::Role(ExportedRole {
                    name: format!("tenants/acme/roles/{id}"),
                    ..ExportedRole::default()
                })),
            })
            .collect();
        TenantDataBatch { records }
    }

    #[tokio::test]
    async fn batches_come_back_in_order_with_their_chunk_numbers() -> io::Result<()> {
        let pushed = [(1, batch(&["a", "b"])), (2, batch(&[])), (3, batch(&["c"]))];
        let mut spool = Spool::new().await?;
        for (chunk, batch) in &pushed {
            spool.push(*chunk, batch).await?;
        }
        let expected: u64 = pushed
            .iter()
            .map(|(_, b)| 12 + b.encoded_len() as u64)
            .sum();
        assert_eq!(spool.bytes(), expected);
        let mut replay = spool.replay().await?;
        for (chunk, batch) in pushed {
            assert_eq!(replay.next().await?, Some((chunk, batch)));
        }
        assert_eq!(replay.next().await?, None);
        Ok(())
    }

    #[tokio::test]
    async fn an_empty_spool_replays_nothing() -> io::Result<()> {
        let mut replay = Spool::new().await?.replay().await?;
        assert_eq!(replay.next().await?, None);
        Ok(())
    }
}
