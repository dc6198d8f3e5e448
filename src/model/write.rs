//! Writing models in the mlx-lm layout: shards of at most a configurable size, the shard index,
//! `config.json` and pass-through files. Every file is written to a temporary file in the target
//! directory and renamed into place, so a reader never sees a half-written file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{io_err, Model, ModelError, Result, TensorData, CONFIG_FILE, INDEX_FILE};

/// mlx-lm's default largest shard: 5 GiB.
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5 << 30;

/// How [`write_model`] lays out its files.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Largest shard in bytes of tensor data (a single larger tensor gets a shard of its own).
    pub max_shard_bytes: u64,
    /// The safetensors `__metadata__` of every shard.
    pub metadata: BTreeMap<String, String>,
}

impl Default for WriteOptions {
    /// 5 GiB shards with metadata `{"format": "mlx"}`, as mlx-lm writes them.
    fn default() -> Self {
        WriteOptions {
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
            metadata: BTreeMap::from([("format".to_string(), "mlx".to_string())]),
        }
    }
}

/// A named tensor to be written.
pub type NamedTensor = (String, TensorData);

/// Splits tensors (in order) into shards of at most `max_bytes` of data each.
pub fn plan_shards(tensors: &[NamedTensor], max_bytes: u64) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut current = Vec::new();
    let mut size = 0u64;
    for (i, (_, t)) in tensors.iter().enumerate() {
        let n = t.bytes().len() as u64;
        if !current.is_empty() && size + n > max_bytes {
            shards.push(std::mem::take(&mut current));
            size = 0;
        }
        current.push(i);
        size += n;
    }
    if !current.is_empty() || shards.is_empty() {
        shards.push(current);
    }
    shards
}

/// The file name of shard `i` of `n` as mlx-lm names it (`model.safetensors` when `n == 1`).
pub fn shard_file_name(i: usize, n: usize) -> String {
    if n == 1 {
        "model.safetensors".to_string()
    } else {
        format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
    }
}

/// Writes `tensors` into `dir` as mlx-lm does: shards of at most `opts.max_shard_bytes`,
/// `model.safetensors.index.json`, and `config` as `config.json` when given. Creates `dir`.
/// Returns the shard file names.
pub fn write_model(
    dir: &Path,
    tensors: &[NamedTensor],
    config: Option<&Value>,
    opts: &WriteOptions,
) -> Result<Vec<String>> {
    let plan = plan_shards(tensors, opts.max_shard_bytes);
    let n = plan.len();
    let shards: Vec<(String, Vec<NamedTensor>)> = plan
        .into_iter()
        .enumerate()
        .map(|(i, idx)| {
            (
                shard_file_name(i, n),
                idx.into_iter().map(|j| tensors[j].clone()).collect(),
            )
        })
        .collect();
    write_shards(dir, &shards, &opts.metadata)?;
    if let Some(config) = config {
        write_json_atomic(&dir.join(CONFIG_FILE), config)?;
    }
    Ok(shards.into_iter().map(|(name, _)| name).collect())
}

/// Writes the given shards (file name and tensors) into `dir` with the same `metadata` each, and
/// the index `model.safetensors.index.json` mapping every tensor to its shard. Creates `dir`.
pub fn write_shards(
    dir: &Path,
    shards: &[(String, Vec<NamedTensor>)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut weight_map = BTreeMap::new();
    let mut total = 0u64;
    for (file, tensors) in shards {
        write_safetensors(&dir.join(file), tensors, metadata)?;
        for (name, t) in tensors {
            weight_map.insert(name.clone(), file.clone());
            total += t.bytes().len() as u64;
        }
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    write_json_atomic(&dir.join(INDEX_FILE), &index)
}

/// Writes one safetensors file atomically (temporary file in the same directory, then rename).
pub fn write_safetensors(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let info = (!metadata.is_empty()).then(|| metadata.clone().into_iter().collect());
    let tmp = temp_path(path);
    let res =
        safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (n.as_str(), t)), info, &tmp);
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(ModelError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        });
    }
    // The serializer's temporary file is private (0600); give the result ordinary permissions.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
            .map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes bytes to `path` atomically (temporary file in the same directory, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(ModelError::Io {
            path: path.to_path_buf(),
            source: e,
        });
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Writes a JSON value, pretty-printed with 4-space indentation as mlx-lm does, atomically.
pub fn write_json_atomic(path: &Path, value: &Value) -> Result<()> {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    serde::Serialize::serialize(value, &mut ser).map_err(|e| ModelError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    buf.push(b'\n');
    write_atomic(path, &buf)
}

/// Copies a file atomically (temporary file in the target's directory, then rename).
pub fn copy_atomic(src: &Path, dst: &Path) -> Result<()> {
    let tmp = temp_path(dst);
    if let Err(e) = std::fs::copy(src, &tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(ModelError::Io {
            path: src.to_path_buf(),
            source: e,
        });
    }
    std::fs::rename(&tmp, dst).map_err(io_err(dst))
}

/// Copies `model`'s pass-through files ([`Model::extra_files`]) into `dir` unchanged.
pub fn copy_extra_files(model: &Model, dir: &Path) -> Result<()> {
    if !model.is_dir {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    for f in &model.extra_files {
        copy_atomic(&model.path.join(f), &dir.join(f))?;
    }
    Ok(())
}
