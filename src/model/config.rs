//! The `quantization` section of an mlx-lm `config.json`.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// Bit widths MLX affine quantization supports (7 is rejected by MLX).
pub const SUPPORTED_BITS: [u32; 6] = [2, 3, 4, 5, 6, 8];
/// Group sizes MLX affine quantization supports.
pub const SUPPORTED_GROUP_SIZES: [usize; 3] = [32, 64, 128];

/// Quantization parameters of one module: group size, bits and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerQuant {
    /// Weights sharing one scale and bias.
    pub group_size: usize,
    /// Bits per quantized weight.
    pub bits: u32,
    /// `"affine"` for MLX affine quantization (the default when a config omits it).
    pub mode: String,
}

/// What `config.json` says about one module: quantized with given parameters, or left float.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerOverride {
    /// The module is quantized with these parameters instead of the defaults.
    Quantized(LayerQuant),
    /// The module is explicitly not quantized (`"path": false`).
    Float,
}

/// The `quantization` (or `quantization_config`) section of an mlx-lm `config.json`.
///
/// # Example
/// ```
/// use ecq::model::QuantConfig;
/// let cfg: serde_json::Value = serde_json::from_str(
///     r#"{"quantization": {"group_size": 64, "bits": 4,
///         "model.layers.0.mlp.gate": {"group_size": 64, "bits": 8}}}"#).unwrap();
/// let q = QuantConfig::from_config(&cfg).unwrap().unwrap();
/// assert_eq!(q.for_module("model.layers.1.mlp.gate").unwrap().bits, 4);
/// assert_eq!(q.for_module("model.layers.0.mlp.gate").unwrap().bits, 8);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantConfig {
    /// Parameters of every quantized module without an override.
    pub default: LayerQuant,
    /// Per-module overrides keyed by module path (e.g. `model.layers.0.mlp.gate`).
    pub overrides: BTreeMap<String, LayerOverride>,
}

impl QuantConfig {
    /// Plain affine quantization with one group size and bit width, no overrides.
    pub fn affine(group_size: usize, bits: u32) -> Self {
        QuantConfig {
            default: LayerQuant {
                group_size,
                bits,
                mode: "affine".into(),
            },
            overrides: BTreeMap::new(),
        }
    }

    /// Reads the `quantization` section (or `quantization_config` when that is the only one) of
    /// a parsed `config.json`. `Ok(None)` when there is neither; `Err(reason)` when the section
    /// is malformed.
    pub fn from_config(config: &Value) -> Result<Option<Self>, String> {
        let section = match config
            .get("quantization")
            .or_else(|| config.get("quantization_config"))
        {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(m)) => m,
            Some(_) => return Err("\"quantization\" is not an object".into()),
        };
        let default = parse_layer(section, "quantization")?;
        let mut overrides = BTreeMap::new();
        for (key, value) in section {
            match value {
                Value::Object(m) => {
                    let layer = parse_layer(m, key)?;
                    overrides.insert(key.clone(), LayerOverride::Quantized(layer));
                }
                Value::Bool(false) => {
                    overrides.insert(key.clone(), LayerOverride::Float);
                }
                _ => {}
            }
        }
        Ok(Some(QuantConfig { default, overrides }))
    }

    /// The parameters of module `path`, `None` when the config says it is not quantized.
    pub fn for_module(&self, path: &str) -> Option<&LayerQuant> {
        match self.overrides.get(path) {
            Some(LayerOverride::Quantized(q)) => Some(q),
            Some(LayerOverride::Float) => None,
            None => Some(&self.default),
        }
    }

    /// The JSON section as mlx-lm writes it (defaults first, then overrides).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("group_size".into(), json!(self.default.group_size));
        m.insert("bits".into(), json!(self.default.bits));
        m.insert("mode".into(), json!(self.default.mode));
        for (k, v) in &self.overrides {
            let v = match v {
                LayerOverride::Quantized(q) => {
                    json!({"group_size": q.group_size, "bits": q.bits, "mode": q.mode})
                }
                LayerOverride::Float => Value::Bool(false),
            };
            m.insert(k.clone(), v);
        }
        Value::Object(m)
    }

    /// Writes this section into `config` as both `quantization` and `quantization_config`.
    pub fn store_in(&self, config: &mut Value) {
        if !config.is_object() {
            *config = Value::Object(Map::new());
        }
        let obj = config.as_object_mut().expect("object");
        obj.insert("quantization".into(), self.to_json());
        obj.insert("quantization_config".into(), self.to_json());
    }
}

fn parse_layer(m: &Map<String, Value>, what: &str) -> Result<LayerQuant, String> {
    let int = |key: &str| -> Result<u64, String> {
        m.get(key)
            .ok_or_else(|| format!("{what}: missing \"{key}\""))?
            .as_u64()
            .ok_or_else(|| format!("{what}: \"{key}\" is not a non-negative integer"))
    };
    let mode = match m.get("mode") {
        None | Some(Value::Null) => "affine".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(format!("{what}: \"mode\" is not a string")),
    };
    Ok(LayerQuant {
        group_size: int("group_size")? as usize,
        bits: int("bits")? as u32,
        mode,
    })
}
