//! Starting shard processors: resume where the shard's checkpoint says, build the source
//! from that position, run the processor on its own task.

use std::sync::Arc;

use recstream_features::FeatureConfig;
use recstream_ingest::source::channel::{ChannelSender, ChannelSource};
use recstream_ingest::{IngestError, SeqNo, ShardId, Source};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::processor::{
    ProcessorConfig, ProcessorError, ShardProcessor, ShardStats, ShardSummary, Sinks, resume,
};

/// A running processor's task; it ends with the processor's summary.
pub type ShardTask = JoinHandle<Result<ShardSummary, ProcessorError>>;

/// The stores and settings every shard processor of a process shares.
#[derive(Clone)]
pub struct Pipeline {
    /// Where processors write features, checkpoints, archive objects and snapshots.
    pub sinks: Sinks,
    /// Aggregation settings (a restored snapshot is read with them).
    pub features: FeatureConfig,
    /// Batching, flush and checkpoint settings.
    pub processor: ProcessorConfig,
}

impl Pipeline {
    /// A pipeline over `sinks`.
    pub fn new(sinks: Sinks, features: FeatureConfig, processor: ProcessorConfig) -> Pipeline {
        Pipeline {
            sinks,
            features,
            processor,
        }
    }

    /// Starts a processor for one shard; `make_source` gets the position to resume after
    /// (the shard's committed checkpoint).
    pub async fn spawn_shard<F>(
        &self,
        shard: ShardId,
        make_source: F,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(Arc<ShardStats>, ShardTask), ProcessorError>
    where
        F: FnOnce(Option<SeqNo>) -> Result<Box<dyn Source>, IngestError>,
    {
        let r = resume(&self.sinks, &shard, &self.features).await?;
        let source = make_source(r.checkpoint.committed.clone())?;
        let processor = ShardProcessor::new(source, r, self.sinks.clone(), self.processor.clone());
        let stats = processor.stats();
        Ok((stats, tokio::spawn(processor.run(shutdown))))
    }

    /// Starts an in-process shard fed through a bounded channel of `capacity` records
    /// (the collector of embedded mode) and returns its sender.
    pub async fn spawn_channel_shard(
        &self,
        shard: ShardId,
        capacity: usize,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(ChannelSender, ShardTask), ProcessorError> {
        let mut sender = None;
        let (_, task) = self
            .spawn_shard(
                shard,
                |after| {
                    let (tx, source) = ChannelSource::new(capacity, after);
                    sender = Some(tx);
                    Ok(Box::new(source) as Box<dyn Source>)
                },
                shutdown,
            )
            .await?;
        let sender =
            sender.ok_or_else(|| ProcessorError::Task("channel source not built".into()))?;
        Ok((sender, task))
    }
}
