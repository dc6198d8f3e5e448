//! Safetensors files and mlx-lm model directories.
//!
//! [`Model::open`] memory-maps a single `.safetensors` file or every shard of an mlx-lm model
//! directory (`config.json`, `model*.safetensors`, `model.safetensors.index.json`) and lists its
//! tensors in file order. [`Model::quantized_modules`] finds the MLX-quantized modules
//! (`<p>.weight` U32 + `<p>.scales` + `<p>.biases`) and checks their shapes against the
//! `quantization` section of `config.json`. [`write::write_model`] writes a model back in the
//! mlx-lm layout, and [`quantize::quantize_model`] turns a float model into an MLX-quantized one.

mod config;
pub mod quantize;
pub mod write;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
pub use safetensors::Dtype;
use serde_json::Value;

pub use config::{LayerOverride, LayerQuant, QuantConfig, SUPPORTED_BITS, SUPPORTED_GROUP_SIZES};

/// Name of the shard index file of an mlx-lm model directory.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Name of the configuration file of an mlx-lm model directory.
pub const CONFIG_FILE: &str = "config.json";

/// Errors of the model reader and writer. Messages start with the file or tensor concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A file is not a valid safetensors file.
    #[error("{}: not a safetensors file ({reason})", path.display())]
    NotSafetensors {
        /// The file.
        path: PathBuf,
        /// What the parser found wrong.
        reason: String,
    },
    /// `config.json` or the shard index is malformed.
    #[error("{}: {reason}", path.display())]
    BadJson {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A directory holds no safetensors file.
    #[error("{}: no .safetensors file found", path.display())]
    NoTensors {
        /// The directory.
        path: PathBuf,
    },
    /// Two shards hold a tensor of the same name.
    #[error("{tensor}: present in both {first} and {second}")]
    DuplicateTensor {
        /// The tensor.
        tensor: String,
        /// The first shard's file name.
        first: String,
        /// The second shard's file name.
        second: String,
    },
    /// A tensor needed by a quantized module is missing.
    #[error("{tensor}: missing (needed by quantized module {module})")]
    MissingTensor {
        /// The missing tensor.
        tensor: String,
        /// The module that needs it.
        module: String,
    },
    /// A tensor has the wrong element type.
    #[error("{tensor}: dtype {actual}, expected {expected}")]
    WrongDtype {
        /// The tensor.
        tensor: String,
        /// What was expected.
        expected: String,
        /// What the file holds.
        actual: String,
    },
    /// A tensor's shape disagrees with its module's packed weight and quantization parameters.
    #[error("{tensor}: shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The tensor.
        tensor: String,
        /// The shape implied by the weight and the config.
        expected: Vec<usize>,
        /// The shape in the file.
        actual: Vec<usize>,
    },
    /// A bit width MLX does not support.
    #[error("{tensor}: unsupported bits {bits} (supported: 2, 3, 4, 5, 6, 8)")]
    UnsupportedBits {
        /// The tensor.
        tensor: String,
        /// The requested bit width.
        bits: u32,
    },
    /// A group size MLX does not support.
    #[error("{tensor}: unsupported group size {group_size} (supported: 32, 64, 128)")]
    UnsupportedGroupSize {
        /// The tensor.
        tensor: String,
        /// The requested group size.
        group_size: usize,
    },
    /// A quantization mode other than `affine`.
    #[error("{tensor}: unsupported quantization mode {mode:?} (only \"affine\")")]
    UnsupportedMode {
        /// The tensor.
        tensor: String,
        /// The mode in the config.
        mode: String,
    },
    /// The row length is not a multiple of the group size (or of the packing unit).
    #[error("{tensor}: {cols} weights per row is not a multiple of {divisor} ({what})")]
    NotDivisible {
        /// The tensor.
        tensor: String,
        /// Weights per row.
        cols: usize,
        /// The divisor.
        divisor: usize,
        /// What the divisor is (`group size`, `weights per packed word`).
        what: &'static str,
    },
    /// A tensor's shape is not usable (rank too small, empty, or too large).
    #[error("{tensor}: {reason}")]
    BadShape {
        /// The tensor.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// Quantization failed.
    #[error("{tensor}: {reason}")]
    Quantize {
        /// The tensor.
        tensor: String,
        /// The quantizer's error.
        reason: String,
    },
}

/// Shorthand for results of this module.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Clone)]
enum Bytes {
    Mapped {
        map: Arc<Mmap>,
        start: usize,
        end: usize,
    },
    Owned(Arc<Vec<u8>>),
}

/// One tensor: dtype, shape and little-endian bytes, either a view into a memory-mapped file or
/// an owned buffer. Cloning is cheap (reference counted).
#[derive(Clone)]
pub struct TensorData {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Bytes,
}

impl fmt::Debug for TensorData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorData")
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("bytes", &self.bytes().len())
            .finish()
    }
}

impl TensorData {
    /// An owned tensor. Panics if `bytes.len()` does not match `dtype` and `shape`.
    pub fn new(dtype: Dtype, shape: Vec<usize>, bytes: Vec<u8>) -> Self {
        let n: usize = shape.iter().product();
        assert_eq!(n * dtype.bitsize() / 8, bytes.len(), "tensor byte length");
        TensorData {
            dtype,
            shape,
            bytes: Bytes::Owned(Arc::new(bytes)),
        }
    }

    /// An owned U32 tensor.
    pub fn from_u32(shape: Vec<usize>, values: &[u32]) -> Self {
        Self::new(
            Dtype::U32,
            shape,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )
    }

    /// An owned U16 tensor.
    pub fn from_u16(shape: Vec<usize>, values: &[u16]) -> Self {
        Self::new(
            Dtype::U16,
            shape,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The raw little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Mapped { map, start, end } => &map[*start..*end],
            Bytes::Owned(v) => v,
        }
    }

    /// The elements of a U32 tensor (copied; `None` for another dtype).
    pub fn to_u32(&self) -> Option<Vec<u32>> {
        (self.dtype == Dtype::U32).then(|| {
            self.bytes()
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        })
    }

    /// The elements of a U16 tensor (copied; `None` for another dtype).
    pub fn to_u16(&self) -> Option<Vec<u16>> {
        (self.dtype == Dtype::U16).then(|| {
            self.bytes()
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect()
        })
    }

    /// The elements of an F32, F16 or BF16 tensor as `f32` (exact; `None` for another dtype).
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        let b = self.bytes();
        match self.dtype {
            Dtype::F32 => Some(
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            Dtype::F16 => Some(
                b.chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
            Dtype::BF16 => Some(
                b.chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Whether the dtype is F32, F16 or BF16.
    pub fn is_float(&self) -> bool {
        matches!(self.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16)
    }
}

impl safetensors::View for &TensorData {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.bytes())
    }
    fn data_len(&self) -> usize {
        self.bytes().len()
    }
}

/// One named tensor of a model and the shard file it came from.
#[derive(Debug, Clone)]
pub struct Tensor {
    /// The tensor's name.
    pub name: String,
    /// Its data.
    pub data: TensorData,
    /// Index into [`Model::shards`].
    pub shard: usize,
}

/// One safetensors file of a model.
#[derive(Debug, Clone)]
pub struct Shard {
    /// File name (relative to the model directory).
    pub file_name: String,
    /// The file's `__metadata__` (string to string).
    pub metadata: BTreeMap<String, String>,
    /// Size of the file in bytes.
    pub file_size: u64,
}

/// A model read from a single safetensors file or an mlx-lm model directory.
#[derive(Debug)]
pub struct Model {
    /// The path it was opened from (file or directory).
    pub path: PathBuf,
    /// Whether it was a directory.
    pub is_dir: bool,
    /// Parsed `config.json` (the directory's, or the one beside a single file), if any.
    pub config: Option<Value>,
    /// The safetensors files.
    pub shards: Vec<Shard>,
    /// Files of the directory that are neither shards, the index nor `config.json`
    /// (tokenizer files and the like), relative to the directory.
    pub extra_files: Vec<PathBuf>,
    /// The tensors, shard after shard, each in file order.
    pub tensors: Vec<Tensor>,
    by_name: HashMap<String, usize>,
}

/// A quantized module found in a model: its packed weight, scales, biases and parameters.
#[derive(Debug, Clone)]
pub struct QuantizedModule {
    /// Module path (`<p>` of `<p>.weight`).
    pub path: String,
    /// Bits per weight.
    pub bits: u32,
    /// Group size of the scales and biases.
    pub group_size: usize,
    /// Rows (product of every dimension but the last).
    pub rows: usize,
    /// Weights per row.
    pub cols: usize,
    /// The packed `U32` weight, shape `[..., cols * bits / 32]`.
    pub weight: TensorData,
    /// Scales, shape `[..., cols / group_size]`.
    pub scales: TensorData,
    /// Biases, same shape and dtype as the scales.
    pub biases: TensorData,
}

impl QuantizedModule {
    /// The module's quantized matrix (scales and biases converted to `f32`, exactly).
    pub fn to_matrix(&self) -> Result<crate::quant::QuantizedMatrix> {
        quantize::module_to_matrix(self)
    }
}

/// What [`read_safetensors`] returns: the file's metadata, its tensors in file order, and its
/// size in bytes.
pub type SafetensorsFile = (BTreeMap<String, String>, Vec<(String, TensorData)>, u64);

/// Opens a safetensors file by memory-mapping it.
fn map_file(path: &Path) -> Result<Arc<Mmap>> {
    let file = File::open(path).map_err(io_err(path))?;
    // SAFETY: the file is opened read-only; ecq writes its outputs through temporary files and
    // renames, never in place. Another process truncating the file while it is mapped is outside
    // what this tool guards against (as with every mmap-based safetensors reader).
    let map = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
    Ok(Arc::new(map))
}

/// Reads one safetensors file: its metadata and tensors (views into the mapping), in file order.
pub fn read_safetensors(path: &Path) -> Result<SafetensorsFile> {
    let map = map_file(path)?;
    let (n, meta) = safetensors::SafeTensors::read_metadata(&map[..]).map_err(|e| {
        ModelError::NotSafetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    })?;
    let base = 8 + n;
    let infos = meta.tensors();
    let mut out = Vec::with_capacity(infos.len());
    for name in meta.offset_keys() {
        let info = infos[&name];
        let (s, e) = info.data_offsets;
        let data = TensorData {
            dtype: info.dtype,
            shape: info.shape.clone(),
            bytes: Bytes::Mapped {
                map: map.clone(),
                start: base + s,
                end: base + e,
            },
        };
        out.push((name, data));
    }
    let metadata = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    Ok((metadata, out, map.len() as u64))
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| ModelError::BadJson {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

impl Model {
    /// Opens a single `.safetensors` file or an mlx-lm model directory.
    ///
    /// A directory's shards are the files named in `model.safetensors.index.json` when it exists,
    /// else every `*.safetensors` file in it (sorted by name). For a single file, a `config.json`
    /// beside it is read for its quantization parameters.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(io_err(path))?;
        if meta.is_dir() {
            Self::open_dir(path)
        } else {
            let config_path = path.parent().map(|p| p.join(CONFIG_FILE));
            let config = match config_path {
                Some(p) if p.is_file() => Some(read_json(&p)?),
                _ => None,
            };
            let file_name = path
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut model = Model {
                path: path.to_path_buf(),
                is_dir: false,
                config,
                shards: Vec::new(),
                extra_files: Vec::new(),
                tensors: Vec::new(),
                by_name: HashMap::new(),
            };
            model.add_shard(path, file_name)?;
            Ok(model)
        }
    }

    fn open_dir(dir: &Path) -> Result<Self> {
        let config_path = dir.join(CONFIG_FILE);
        let config = if config_path.is_file() {
            Some(read_json(&config_path)?)
        } else {
            None
        };
        let index_path = dir.join(INDEX_FILE);
        let mut shard_names: Vec<String> = Vec::new();
        if index_path.is_file() {
            let index = read_json(&index_path)?;
            let map = index
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| ModelError::BadJson {
                    path: index_path.clone(),
                    reason: "no \"weight_map\" object".into(),
                })?;
            for v in map.values() {
                let f = v.as_str().ok_or_else(|| ModelError::BadJson {
                    path: index_path.clone(),
                    reason: "a \"weight_map\" value is not a string".into(),
                })?;
                if !shard_names.iter().any(|s| s == f) {
                    shard_names.push(f.to_string());
                }
            }
            shard_names.sort();
        }
        let mut extra = Vec::new();
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let ft = entry.file_type().map_err(io_err(&entry.path()))?;
            if !ft.is_file() || name.starts_with('.') {
                continue;
            }
            if name.ends_with(".safetensors") {
                found.push(name);
            } else if name != CONFIG_FILE && name != INDEX_FILE {
                extra.push(PathBuf::from(name));
            }
        }
        found.sort();
        extra.sort();
        if shard_names.is_empty() {
            shard_names = found.clone();
        } else {
            // Safetensors files not named by the index are passed through like any other file.
            for f in &found {
                if !shard_names.contains(f) {
                    extra.push(PathBuf::from(f));
                }
            }
        }
        if shard_names.is_empty() {
            return Err(ModelError::NoTensors {
                path: dir.to_path_buf(),
            });
        }
        let mut model = Model {
            path: dir.to_path_buf(),
            is_dir: true,
            config,
            shards: Vec::new(),
            extra_files: extra,
            tensors: Vec::new(),
            by_name: HashMap::new(),
        };
        for name in shard_names {
            model.add_shard(&dir.join(&name), name)?;
        }
        Ok(model)
    }

    fn add_shard(&mut self, path: &Path, file_name: String) -> Result<()> {
        let (metadata, tensors, file_size) = read_safetensors(path)?;
        let shard = self.shards.len();
        for (name, data) in tensors {
            if let Some(&i) = self.by_name.get(&name) {
                return Err(ModelError::DuplicateTensor {
                    tensor: name,
                    first: self.shards[self.tensors[i].shard].file_name.clone(),
                    second: file_name,
                });
            }
            self.by_name.insert(name.clone(), self.tensors.len());
            self.tensors.push(Tensor { name, data, shard });
        }
        self.shards.push(Shard {
            file_name,
            metadata,
            file_size,
        });
        Ok(())
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&TensorData> {
        self.by_name.get(name).map(|&i| &self.tensors[i].data)
    }

    /// The tensor called `name`, with its shard.
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// Total bytes of every safetensors file of the model.
    pub fn file_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.file_size).sum()
    }

    /// The quantization section of the model's config, if any.
    pub fn quant_config(&self) -> Result<Option<QuantConfig>> {
        match &self.config {
            None => Ok(None),
            Some(c) => QuantConfig::from_config(c).map_err(|reason| ModelError::BadJson {
                path: self.config_path(),
                reason,
            }),
        }
    }

    fn config_path(&self) -> PathBuf {
        if self.is_dir {
            self.path.join(CONFIG_FILE)
        } else {
            self.path
                .parent()
                .unwrap_or(Path::new("."))
                .join(CONFIG_FILE)
        }
    }

    /// Every MLX-quantized module: a `<p>.weight` of dtype U32 with `<p>.scales` and
    /// `<p>.biases` beside it, in tensor order, with shapes checked against the config.
    ///
    /// Bits and group size come from the config's `quantization` section (per-module overrides
    /// first). Without a config they are inferred from the shapes; when several combinations
    /// fit, the one with group size 64 (then 32, 128) and the most bits is taken.
    pub fn quantized_modules(&self) -> Result<Vec<QuantizedModule>> {
        let qc = self.quant_config()?;
        let mut out = Vec::new();
        for t in &self.tensors {
            let Some(path) = t.name.strip_suffix(".weight") else {
                continue;
            };
            let has_scales = self.get(&format!("{path}.scales")).is_some();
            let has_biases = self.get(&format!("{path}.biases")).is_some();
            // A U32 weight without scales is not MLX-quantized (an id table, say); a float weight
            // with scales and biases is a broken quantized module and reported as such.
            if has_scales && (t.data.dtype() == Dtype::U32 || has_biases) {
                out.push(self.check_module(path, &t.data, qc.as_ref())?);
            }
        }
        Ok(out)
    }

    /// The quantized module at `path` (`<path>.weight` etc.), checked like
    /// [`quantized_modules`](Self::quantized_modules).
    pub fn quantized_module(&self, path: &str) -> Result<QuantizedModule> {
        let wname = format!("{path}.weight");
        let w = self.get(&wname).ok_or_else(|| ModelError::MissingTensor {
            tensor: wname.clone(),
            module: path.into(),
        })?;
        self.check_module(path, w, self.quant_config()?.as_ref())
    }

    fn check_module(
        &self,
        path: &str,
        weight: &TensorData,
        qc: Option<&QuantConfig>,
    ) -> Result<QuantizedModule> {
        let wname = format!("{path}.weight");
        let sname = format!("{path}.scales");
        let bname = format!("{path}.biases");
        if weight.dtype() != Dtype::U32 {
            return Err(ModelError::WrongDtype {
                tensor: wname,
                expected: "U32 (packed MLX weights)".into(),
                actual: format!("{:?}", weight.dtype()),
            });
        }
        let scales = self
            .get(&sname)
            .ok_or_else(|| ModelError::MissingTensor {
                tensor: sname.clone(),
                module: path.into(),
            })?
            .clone();
        let biases = self
            .get(&bname)
            .ok_or_else(|| ModelError::MissingTensor {
                tensor: bname.clone(),
                module: path.into(),
            })?
            .clone();
        let wshape = weight.shape();
        if wshape.len() < 2 || wshape.contains(&0) {
            return Err(ModelError::BadShape {
                tensor: wname,
                reason: format!(
                    "packed weight shape {wshape:?} must have rank >= 2 and no empty dimension"
                ),
            });
        }
        let packed_cols = *wshape.last().expect("rank >= 2");
        let lead = &wshape[..wshape.len() - 1];
        let rows: usize = lead.iter().product();
        for (name, t) in [(&sname, &scales), (&bname, &biases)] {
            if !t.is_float() {
                return Err(ModelError::WrongDtype {
                    tensor: name.clone(),
                    expected: "F32, F16 or BF16".into(),
                    actual: format!("{:?}", t.dtype()),
                });
            }
        }
        let scale_cols = scales.shape().last().copied().unwrap_or(0);
        let (bits, group_size, mode) =
            match qc {
                Some(qc) => match qc.for_module(path) {
                    Some(lq) => (lq.bits, lq.group_size, lq.mode.clone()),
                    None => return Err(ModelError::BadShape {
                        tensor: wname,
                        reason:
                            "stored as U32 with scales but config.json marks the module unquantized"
                                .into(),
                    }),
                },
                None => {
                    let (b, g) = infer_params(packed_cols, scale_cols).ok_or_else(|| {
                        ModelError::ShapeMismatch {
                            tensor: sname.clone(),
                            expected: lead
                                .iter()
                                .copied()
                                .chain([packed_cols * 32 / 4 / 64])
                                .collect(),
                            actual: scales.shape().to_vec(),
                        }
                    })?;
                    (b, g, "affine".to_string())
                }
            };
        if mode != "affine" {
            return Err(ModelError::UnsupportedMode {
                tensor: wname,
                mode,
            });
        }
        if !SUPPORTED_BITS.contains(&bits) {
            return Err(ModelError::UnsupportedBits {
                tensor: wname,
                bits,
            });
        }
        if !SUPPORTED_GROUP_SIZES.contains(&group_size) {
            return Err(ModelError::UnsupportedGroupSize {
                tensor: wname,
                group_size,
            });
        }
        let total_bits = packed_cols * 32;
        if !total_bits.is_multiple_of(bits as usize) {
            return Err(ModelError::BadShape {
                tensor: wname,
                reason: format!("{packed_cols} packed words per row do not hold a whole number of {bits}-bit weights"),
            });
        }
        let cols = total_bits / bits as usize;
        if !cols.is_multiple_of(group_size) {
            return Err(ModelError::NotDivisible {
                tensor: wname,
                cols,
                divisor: group_size,
                what: "group size",
            });
        }
        let expected: Vec<usize> = lead.iter().copied().chain([cols / group_size]).collect();
        if scales.shape() != expected.as_slice() {
            return Err(ModelError::ShapeMismatch {
                tensor: sname,
                expected,
                actual: scales.shape().to_vec(),
            });
        }
        if biases.shape() != expected.as_slice() {
            return Err(ModelError::ShapeMismatch {
                tensor: bname,
                expected,
                actual: biases.shape().to_vec(),
            });
        }
        if biases.dtype() != scales.dtype() {
            return Err(ModelError::WrongDtype {
                tensor: bname,
                expected: format!("{:?} (the scales' dtype)", scales.dtype()),
                actual: format!("{:?}", biases.dtype()),
            });
        }
        Ok(QuantizedModule {
            path: path.to_string(),
            bits,
            group_size,
            rows,
            cols,
            weight: weight.clone(),
            scales,
            biases,
        })
    }
}

/// Infers (bits, group size) from packed words per row and scales per row when there is no
/// config: group size 64 first, then 32, then 128; the most bits first.
fn infer_params(packed_cols: usize, scale_cols: usize) -> Option<(u32, usize)> {
    if scale_cols == 0 {
        return None;
    }
    for g in [64usize, 32, 128] {
        for b in [8u32, 6, 5, 4, 3, 2] {
            if (packed_cols * 32).is_multiple_of(b as usize)
                && packed_cols * 32 / b as usize == scale_cols * g
            {
                return Some((b, g));
            }
        }
    }
    None
}
