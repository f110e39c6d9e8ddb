//! The rule store on disk: one JSON file in the state directory, replaced
//! atomically (write a temp file, fsync it, rename over, fsync the
//! directory), so a crash leaves either the old or the new file, never half.

use std::{
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::rules::{Rule, RuleStore};

const STATE_FILE: &str = "rules.json";
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("state file {path} is corrupt ({reason}); refusing to start so it is not overwritten: fix or move it away")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write state file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    rules: Vec<Rule>,
}

pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The saved rules; an absent file is an empty store.
    pub fn load(&self) -> Result<RuleStore, StateError> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(RuleStore::default()),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let file: StateFile = serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if file.version != FORMAT_VERSION {
            return Err(StateError::Corrupt {
                path,
                reason: format!("unknown format version {}", file.version),
            });
        }
        Ok(RuleStore::from_rules(file.rules))
    }

    pub fn save(&self, store: &RuleStore) -> Result<(), StateError> {
        let path = self.path();
        let werr = |source| StateError::Write { path: path.clone(), source };
        fs::create_dir_all(&self.dir).map_err(werr)?;
        let file = StateFile {
            version: FORMAT_VERSION,
            rules: store.iter().cloned().collect(),
        };
        let bytes = serde_json::to_vec(&file).expect("rules always serialize");
        let tmp = self.dir.join(format!(".{STATE_FILE}.tmp"));
        write_synced(&tmp, &bytes).map_err(werr)?;
        fs::rename(&tmp, &path).map_err(werr)?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(werr)?;
        Ok(())
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{RuleKind, RuleSource};

    fn sample() -> RuleStore {
        RuleStore::from_rules([Rule {
            prefix: "2001:db8::/32".parse().unwrap(),
            kind: RuleKind::Block,
            source: RuleSource::Auto,
            reason: "udp flood".into(),
            created: 1,
            expires: Some(2),
            uid: None,
        }])
    }

    #[test]
    fn round_trips_and_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("nested"));
        assert!(state.load().unwrap().is_empty());
        state.save(&sample()).unwrap();
        assert_eq!(state.load().unwrap(), sample());
        assert!(!dir.path().join("nested/.rules.json.tmp").exists());
    }

    #[test]
    fn corrupt_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        state.save(&sample()).unwrap();
        let full = fs::read(state.path()).unwrap();
        fs::write(state.path(), &full[..full.len() / 2]).unwrap();
        let err = state.load().unwrap_err().to_string();
        assert!(err.contains("is corrupt"), "{err}");
        assert_eq!(fs::read(state.path()).unwrap(), &full[..full.len() / 2]);
    }
}
