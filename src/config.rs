//! The configuration file: serde structs with defaults, validated before anything connects.
//!
//! Layering: defaults < TOML file (`--config`) < environment (`RECSTREAM__SECTION__KEY`,
//! e.g. `RECSTREAM__SERVER__LISTEN=0.0.0.0:8080`). AWS endpoints and credentials come from
//! the SDK's own variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, the default credential chain).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use recstream_commerce::CommerceConfig;
use recstream_features::FeatureConfig;
use recstream_ingest::aws::AwsConfig;
use recstream_ingest::source::kinesis::KinesisConfig;
use recstream_pipeline::ProcessorConfig;
use recstream_scoring::ScoringConfig;
use serde::{Deserialize, Serialize};

/// Which implementations sit behind the seams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Local disk and in-process: nothing to install.
    #[default]
    Embedded,
    /// Kinesis, DynamoDB, S3 and Redis.
    Aws,
}

/// The `[server]` section: the HTTP listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP API listens on (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// The internal listener for `GET /metrics` (Prometheus); `None` = metrics are not
    /// served over HTTP. Never on the public `listen` address.
    pub metrics_listen: Option<SocketAddr>,
    /// Capacity of the in-process collector queue (embedded mode), in events.
    pub collector_queue: usize,
    /// API clients (hashed keys, scopes) and the JWT groups that carry roles.
    pub auth: recstream_serving::AccessConfig,
    /// Header read and idle timeouts, request timeout, connection limit, URI length.
    pub limits: recstream_serving::server::ServerLimits,
    /// How served lists are published on the stream (queue, batch, linger).
    pub served_lists: recstream_serving::publish::ServedListsConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            metrics_listen: None,
            collector_queue: 10_000,
            auth: recstream_serving::AccessConfig::default(),
            limits: recstream_serving::server::ServerLimits::default(),
            served_lists: recstream_serving::publish::ServedListsConfig::default(),
        }
    }
}

/// The `[embedded]` section (used when `mode = "embedded"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// Where the embedded database, archive, dead letters and snapshots live.
    pub data_dir: PathBuf,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            data_dir: PathBuf::from(".recstream/data"),
        }
    }
}

/// The whole configuration: defaults, overridden by the TOML file, overridden by
/// `RECSTREAM__*` environment variables.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Which implementations sit behind the seams (default `embedded`).
    pub mode: Mode,
    /// The HTTP listener.
    pub server: ServerConfig,
    /// Local storage of the embedded mode.
    pub embedded: EmbeddedConfig,
    /// How shard processors batch, flush and checkpoint.
    pub processor: ProcessorConfig,
    /// Aggregation settings (half-lives, state bounds); training must use the same.
    pub features: FeatureConfig,
    /// Candidate budgets, blend weights, filters and online learning.
    pub scoring: ScoringConfig,
    /// AWS resource names, retry policy, Redis (used when `mode = "aws"`).
    pub aws: AwsConfig,
    /// Kinesis consumer, producer and lease settings (used when `mode = "aws"`).
    pub kinesis: KinesisConfig,
    /// Cart, checkout, payments, the order saga.
    pub commerce: CommerceConfig,
    /// Model loading for serving.
    pub model: ModelConfig,
}

/// How the server finds and reloads the trained model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Check `models/CURRENT` in the object store this often (ms) and load a new version
    /// without a restart; 0 = load once at start.
    pub reload_interval_ms: u64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            reload_interval_ms: 10_000,
        }
    }
}

impl Config {
    /// Defaults, then the file (if any), then `RECSTREAM__*` variables; validated.
    pub fn load(file: Option<&Path>) -> Result<Config, String> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(format!("config file {} does not exist", f.display()));
            }
            fig = fig.merge(Toml::file(f));
        }
        let cfg: Config = fig
            .merge(Env::prefixed("RECSTREAM__").split("__"))
            .extract()
            .map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The demo's configuration: [`Config::load`] (defaults, the file, `RECSTREAM__*`, as
    /// `run` reads it), then the demo's own state directory (`--data-dir`, wiped at start:
    /// never a configured one) and, when given, `--listen`.
    pub fn for_demo(
        file: Option<&Path>,
        listen: Option<std::net::SocketAddr>,
        data_dir: &Path,
    ) -> Result<Config, String> {
        let mut cfg = Config::load(file)?;
        if let Some(l) = listen {
            cfg.server.listen = l;
        }
        cfg.embedded.data_dir = data_dir.to_path_buf();
        cfg.commerce.data_dir = data_dir.join("commerce");
        cfg.validate()?;
        Ok(cfg)
    }

    /// Pure checks of every section; nothing connects.
    pub fn validate(&self) -> Result<(), String> {
        self.processor.validate()?;
        self.features.validate()?;
        self.scoring.validate()?;
        if self.server.collector_queue == 0 {
            return Err("server.collector_queue must be positive".into());
        }
        if let Some(m) = self.server.metrics_listen
            && m == self.server.listen
            && m.port() != 0
        {
            return Err("server.metrics_listen must differ from server.listen".into());
        }
        self.server.auth.validate()?;
        self.server.limits.validate()?;
        self.server.served_lists.validate()?;
        self.commerce.validate()?;
        if self.mode == Mode::Aws {
            self.aws.validate()?;
            self.kinesis.validate(&self.aws)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn aws_mode_is_validated() {
        let mut cfg = Config {
            mode: Mode::Aws,
            ..Config::default()
        };
        cfg.validate().unwrap();
        cfg.aws.bucket = "Not_A_Bucket".into();
        assert!(cfg.validate().unwrap_err().contains("bucket"));
    }

    #[test]
    fn the_demo_reads_the_config_file_and_keeps_its_own_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[server]\nlisten = \"127.0.0.1:9999\"\n[scoring]\nmax_per_category = 7\n[embedded]\ndata_dir = \"/elsewhere\"\n",
        )
        .unwrap();
        let state = dir.path().join("demo");
        let cfg = Config::for_demo(Some(&f), None, &state).unwrap();
        assert_eq!(cfg.scoring.max_per_category, 7);
        assert_eq!(cfg.server.listen, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(
            cfg.embedded.data_dir, state,
            "the wiped directory is the demo's own"
        );
        assert_eq!(cfg.commerce.data_dir, state.join("commerce"));
        let cfg = Config::for_demo(Some(&f), Some("127.0.0.1:0".parse().unwrap()), &state).unwrap();
        assert_eq!(cfg.server.listen, "127.0.0.1:0".parse().unwrap());
        std::fs::write(&f, "[scoring]\nmax_per_category = 0\n").unwrap();
        assert!(Config::for_demo(Some(&f), None, &state).is_err());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[server]\nlisten = \"127.0.0.1:9999\"\nlisen = 1\n").unwrap();
        let err = Config::load(Some(&f)).unwrap_err();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn api_clients_and_the_metrics_listener_come_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        let hash = recstream_serving::auth::hash_key("rsk_x");
        std::fs::write(
            &f,
            format!(
                "[server]\nmetrics_listen = \"127.0.0.1:9100\"\n[[server.auth.clients]]\nid = \"storefront\"\nscopes = [\"events:write\", \"recommendations:read\"]\nkey_sha256 = [\"{hash}\"]\n"
            ),
        )
        .unwrap();
        let cfg = Config::load(Some(&f)).unwrap();
        assert_eq!(cfg.server.metrics_listen.unwrap().port(), 9100);
        assert_eq!(cfg.server.auth.clients[0].key_sha256, vec![hash]);
        std::fs::write(
            &f,
            "[server]\nlisten = \"127.0.0.1:9100\"\nmetrics_listen = \"127.0.0.1:9100\"\n",
        )
        .unwrap();
        assert!(
            Config::load(Some(&f))
                .unwrap_err()
                .contains("metrics_listen")
        );
    }

    #[test]
    fn file_overrides_defaults_and_is_validated() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[processor]\nbatch_size = 0\n").unwrap();
        assert!(Config::load(Some(&f)).unwrap_err().contains("batch_size"));
        std::fs::write(&f, "[server]\nlisten = \"127.0.0.1:9999\"\n").unwrap();
        assert_eq!(Config::load(Some(&f)).unwrap().server.listen.port(), 9999);
    }
}
