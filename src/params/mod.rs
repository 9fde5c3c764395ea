//! Parameters of a layer stack: PyTorch's names, shapes and order in one flat buffer.
//!
//! [`ParamLayout`] lists the tensors of a configuration in the order of PyTorch's
//! `state_dict()`: for each layer `k`, the forward direction then the reverse one, each with
//! `weight_ih_l{k}` `[G·H, In_k]`, `weight_hh_l{k}` `[G·H, Hout]`, `bias_ih_l{k}` `[G·H]`,
//! `bias_hh_l{k}` `[G·H]` (when `bias`), `weight_hr_l{k}` `[Hout, H]` (when `proj_size > 0`)
//! `weight_peephole_l{k}` `[3, H]` (LSTM with peepholes, rows `i, f, o`), and with
//! [`layer_norm`](crate::RnnConfigBuilder::layer_norm) `weight_ln_ih_l{k}` `[G·H]`,
//! `weight_ln_hh_l{k}` `[G·H]` and, LSTM only, `weight_ln_c_l{k}` `[H]`, `bias_ln_c_l{k}` `[H]`;
//! the reverse direction's names end in `_reverse`. `In_0 = I`, above it the output width (`D·Hout`, or `Hout` with `merge=sum`). A
//! reverse-only stack (`direction=reverse`) has one direction, with the unsuffixed names.
//! Each tensor is stored row-major ("last dim fastest") at its offset in the flat buffer.
//!
//! [`Params`] owns such a buffer. Gradients use the same layout, so a gradient buffer can be
//! wrapped in a [`Params`] too and read by name.

mod safetensors_io;

pub use safetensors_io::{config_from_metadata, config_metadata};

pub use safetensors_io::LoadOptions;
#[cfg(any(test, feature = "testkit"))]
pub(crate) use safetensors_io::{read_file, st_error, view_to_i64, view_to_vec};

use crate::config::RnnConfig;
use crate::element::{Element, Float};
use crate::error::{try_zeroed, Error, Result};
use crate::rng::SplitMix64;
use std::ops::Range;

/// Which of a layer-direction's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ParamKind {
    /// `weight_ih`, `[G·H, In]`.
    WeightIh,
    /// `weight_hh`, `[G·H, Hout]`.
    WeightHh,
    /// `bias_ih`, `[G·H]`.
    BiasIh,
    /// `bias_hh`, `[G·H]`.
    BiasHh,
    /// `weight_hr` (LSTM projection), `[Hout, H]`.
    WeightHr,
    /// `weight_peephole` (LSTM peepholes), `[3, H]`, rows `i, f, o` (ONNX's `P` holds them in
    /// that order too).
    WeightPeephole,
    /// `weight_ln_ih` (layer norm), `[G·H]`: the gain of the input product's normalisation.
    WeightLnIh,
    /// `weight_ln_hh` (layer norm), `[G·H]`: the gain of the recurrent product's normalisation.
    WeightLnHh,
    /// `weight_ln_c` (layer-normalised LSTM), `[H]`: the gain of the cell state's normalisation.
    WeightLnC,
    /// `bias_ln_c` (layer-normalised LSTM), `[H]`: the bias of the cell state's normalisation.
    BiasLnC,
}

impl ParamKind {
    /// Every kind, in the order of a layer-direction's tensors in `state_dict()`.
    pub const ALL: [ParamKind; 10] = [
        ParamKind::WeightIh,
        ParamKind::WeightHh,
        ParamKind::BiasIh,
        ParamKind::BiasHh,
        ParamKind::WeightHr,
        ParamKind::WeightPeephole,
        ParamKind::WeightLnIh,
        ParamKind::WeightLnHh,
        ParamKind::WeightLnC,
        ParamKind::BiasLnC,
    ];

    /// The PyTorch shape of this tensor of layer `layer` of `config`, or `None` where the
    /// configuration has no such tensor (biases without `bias`, `weight_hr` without projection).
    pub fn shape(self, config: &RnnConfig, layer: usize) -> Option<Vec<usize>> {
        let (gh, hout) = (config.gates() * config.hidden_size(), config.hidden_out_size());
        match self {
            ParamKind::WeightIh => Some(vec![gh, config.layer_input_size(layer)]),
            ParamKind::WeightHh => Some(vec![gh, hout]),
            ParamKind::BiasIh | ParamKind::BiasHh => config.bias().then(|| vec![gh]),
            ParamKind::WeightHr => (config.proj_size() > 0).then(|| vec![hout, config.hidden_size()]),
            ParamKind::WeightPeephole => config.peephole().then(|| vec![3, config.hidden_size()]),
            ParamKind::WeightLnIh | ParamKind::WeightLnHh => config.layer_norm().then(|| vec![gh]),
            ParamKind::WeightLnC | ParamKind::BiasLnC => {
                (config.layer_norm() && config.cell() == crate::config::CellKind::Lstm).then(|| vec![config.hidden_size()])
            }
        }
    }

    fn stem(self) -> &'static str {
        match self {
            ParamKind::WeightIh => "weight_ih",
            ParamKind::WeightHh => "weight_hh",
            ParamKind::BiasIh => "bias_ih",
            ParamKind::BiasHh => "bias_hh",
            ParamKind::WeightHr => "weight_hr",
            ParamKind::WeightPeephole => "weight_peephole",
            ParamKind::WeightLnIh => "weight_ln_ih",
            ParamKind::WeightLnHh => "weight_ln_hh",
            ParamKind::WeightLnC => "weight_ln_c",
            ParamKind::BiasLnC => "bias_ln_c",
        }
    }
}

/// One parameter tensor: its PyTorch name, shape and place in the flat buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    /// PyTorch name, e.g. `weight_hh_l1_reverse`.
    pub name: String,
    /// PyTorch shape, e.g. `[4·H, Hout]`.
    pub shape: Vec<usize>,
    /// Offset of its first element in the flat buffer.
    pub offset: usize,
    /// Layer index `k`.
    pub layer: usize,
    /// 0 for the forward direction, 1 for the reverse one.
    pub direction: usize,
    /// Which tensor.
    pub kind: ParamKind,
}

impl ParamSpec {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// Whether it has no elements (never, for a valid configuration).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Its element range in the flat buffer.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// The element ranges of one layer-direction's tensors in the flat buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRanges {
    /// `weight_ih`, `[G·H, In]`.
    pub w_ih: Range<usize>,
    /// `weight_hh`, `[G·H, Hout]`.
    pub w_hh: Range<usize>,
    /// `bias_ih`, `[G·H]`, when the stack has biases.
    pub b_ih: Option<Range<usize>>,
    /// `bias_hh`, `[G·H]`, when the stack has biases.
    pub b_hh: Option<Range<usize>>,
    /// `weight_hr`, `[Hout, H]`, when the LSTM has a projection.
    pub w_hr: Option<Range<usize>>,
    /// `weight_peephole`, `[3, H]`, when the LSTM has peepholes.
    pub peephole: Option<Range<usize>>,
    /// `weight_ln_ih`, `[G·H]`, with layer norm.
    pub ln_ih: Option<Range<usize>>,
    /// `weight_ln_hh`, `[G·H]`, with layer norm.
    pub ln_hh: Option<Range<usize>>,
    /// `weight_ln_c`, `[H]`, with layer norm (LSTM).
    pub ln_c_weight: Option<Range<usize>>,
    /// `bias_ln_c`, `[H]`, with layer norm (LSTM).
    pub ln_c_bias: Option<Range<usize>>,
}

/// The names, shapes and offsets of every parameter tensor of a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamLayout {
    config: RnnConfig,
    specs: Vec<ParamSpec>,
    layers: Vec<LayerRanges>,
    len: usize,
}

impl ParamLayout {
    /// The layout of `config`'s parameters: one entry per tensor, at most
    /// `10·D·`[`RnnConfig::MAX_NUM_LAYERS`] of them.
    pub fn new(config: &RnnConfig) -> Self {
        let specs: Vec<ParamSpec> = Self::specs_of(config).collect();
        // Every layer-direction has the same kinds of tensors, in the order of `ParamKind::ALL`.
        let per_dir = ParamKind::ALL.iter().filter(|k| k.shape(config, 0).is_some()).count();
        let layers = specs
            .chunks(per_dir)
            .map(|dir| {
                let range = |kind: ParamKind| dir.iter().find(|s| s.kind == kind).map(ParamSpec::range);
                LayerRanges {
                    // Every configuration has the two weights.
                    w_ih: range(ParamKind::WeightIh).unwrap_or_default(),
                    w_hh: range(ParamKind::WeightHh).unwrap_or_default(),
                    b_ih: range(ParamKind::BiasIh),
                    b_hh: range(ParamKind::BiasHh),
                    w_hr: range(ParamKind::WeightHr),
                    peephole: range(ParamKind::WeightPeephole),
                    ln_ih: range(ParamKind::WeightLnIh),
                    ln_hh: range(ParamKind::WeightLnHh),
                    ln_c_weight: range(ParamKind::WeightLnC),
                    ln_c_bias: range(ParamKind::BiasLnC),
                }
            })
            .collect();
        let len = specs.last().map_or(0, |s| s.range().end);
        ParamLayout { config: config.clone(), specs, layers, len }
    }

    /// The tensors of `config` in `state_dict()` order, made one at a time: a loader checks a
    /// file against them before it allocates anything sized from the configuration.
    pub(crate) fn specs_of(config: &RnnConfig) -> impl Iterator<Item = ParamSpec> + '_ {
        let mut offset = 0;
        (0..config.num_layers())
            .flat_map(move |layer| (0..config.num_directions()).map(move |direction| (layer, direction)))
            .flat_map(move |(layer, direction)| {
                ParamKind::ALL.into_iter().filter_map(move |kind| {
                    let suffix = if direction == 1 { "_reverse" } else { "" };
                    Some((format!("{}_l{layer}{suffix}", kind.stem()), kind.shape(config, layer)?, layer, direction, kind))
                })
            })
            .map(move |(name, shape, layer, direction, kind)| {
                let spec = ParamSpec { name, shape, offset, layer, direction, kind };
                offset += spec.len();
                spec
            })
    }

    /// The configuration this layout is for.
    pub fn config(&self) -> &RnnConfig {
        &self.config
    }
    /// Total number of elements of all tensors.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether there are no parameters (never, for a valid configuration).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Every tensor, in `state_dict()` order.
    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }
    /// The tensor called `name`, if this configuration has one.
    pub fn find(&self, name: &str) -> Option<&ParamSpec> {
        self.specs.iter().find(|s| s.name == name)
    }
    /// The ranges of layer `layer`, direction `direction` (0 forward, 1 reverse).
    pub fn layer(&self, layer: usize, direction: usize) -> &LayerRanges {
        &self.layers[layer * self.config.num_directions() + direction]
    }
    /// All names, comma-separated, for error messages (the first ones of a deep stack).
    pub(crate) fn names(&self) -> String {
        Self::names_of(&self.config)
    }
    /// The names of `config`'s tensors, comma-separated, for error messages: all of them, or
    /// the first ones and their number where there are many.
    pub(crate) fn names_of(config: &RnnConfig) -> String {
        const SHOWN: usize = 20;
        let mut names: Vec<String> = Self::specs_of(config).take(SHOWN + 1).map(|s| s.name).collect();
        if names.len() > SHOWN {
            let per_dir = ParamKind::ALL.iter().filter(|k| k.shape(config, 0).is_some()).count();
            names.truncate(SHOWN);
            names.push(format!("... ({} tensors in all)", per_dir * config.num_layers() * config.num_directions()));
        }
        names.join(", ")
    }
    /// Whether `name` is the PyTorch name of one of `config`'s tensors, without building the
    /// layout.
    pub(crate) fn is_param_name(config: &RnnConfig, name: &str) -> bool {
        let (base, direction) = match name.strip_suffix("_reverse") {
            Some(b) => (b, 1),
            None => (name, 0),
        };
        let Some((stem, layer)) = base.rsplit_once("_l") else { return false };
        let Ok(layer) = layer.parse::<usize>() else { return false };
        let Some(kind) = ParamKind::ALL.into_iter().find(|k| k.stem() == stem) else { return false };
        let suffix = if direction == 1 { "_reverse" } else { "" };
        layer < config.num_layers()
            && direction < config.num_directions()
            && kind.shape(config, layer).is_some()
            && name == format!("{stem}_l{layer}{suffix}")
    }
    /// Checks that a flat parameter (or gradient) buffer named `arg` has [`len`](Self::len)
    /// elements.
    pub fn check_buffer(&self, arg: &str, len: usize) -> Result<()> {
        if len == self.len {
            Ok(())
        } else {
            Err(Error::shape(
                arg,
                format!(
                    "the flat parameter layout of {} layer(s) of {}: {} elements",
                    self.config.num_layers(),
                    self.config.cell(),
                    self.len
                ),
                format!("{len} elements"),
            ))
        }
    }
}

/// A configuration's parameters in one flat buffer, in [`ParamLayout`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct Params<T> {
    layout: ParamLayout,
    data: Vec<T>,
}

impl<T: Element> Params<T> {
    /// All zeros.
    ///
    /// The buffer is allocated fallibly: parameters that do not fit in memory are
    /// [`Error::TooLarge`] naming `config`, not an abort.
    pub fn zeros(config: &RnnConfig) -> Result<Self> {
        let layout = ParamLayout::new(config);
        let what = format!(
            "{} parameters of {} layer(s) of {} with input_size {}, hidden_size {}",
            layout.len(),
            config.num_layers(),
            config.cell(),
            config.input_size(),
            config.hidden_size()
        );
        let data = try_zeroed("config", what, layout.len())?;
        Ok(Params { layout, data })
    }

    /// PyTorch's initialisation: every tensor uniform in `±1/sqrt(H)`, drawn from a generator
    /// seeded with `seed` (the same seed gives the same parameters everywhere; the values differ
    /// from PyTorch's own generator). Allocated like [`zeros`](Self::zeros). The layer-norm
    /// tensors are set as `torch.nn.LayerNorm` and Haste set them, gains 1 and bias 0, and the
    /// generator draws for the other tensors only: they are the same with and without layer norm.
    pub fn init_uniform(config: &RnnConfig, seed: u64) -> Result<Self> {
        let mut p = Self::zeros(config)?;
        let k = 1.0 / (config.hidden_size() as f64).sqrt();
        let mut rng = SplitMix64::new(seed);
        // The generator draws for the other tensors only, in layout order, so that they are the
        // same with and without layer norm.
        for spec in p.layout.specs.iter() {
            let values = &mut p.data[spec.range()];
            match spec.kind {
                ParamKind::WeightLnIh | ParamKind::WeightLnHh | ParamKind::WeightLnC => values.fill(T::from_f64(1.0)),
                ParamKind::BiasLnC => values.fill(T::from_f64(0.0)),
                _ => values.iter_mut().for_each(|v| *v = T::from_f64(rng.uniform(-k, k))),
            }
        }
        Ok(p)
    }

    /// Wraps a flat buffer, checking its length against the layout of `config`.
    pub fn from_vec(config: &RnnConfig, data: Vec<T>) -> Result<Self> {
        let layout = ParamLayout::new(config);
        layout.check_buffer("params", data.len())?;
        Ok(Params { layout, data })
    }

    /// The configuration.
    pub fn config(&self) -> &RnnConfig {
        self.layout.config()
    }
    /// The layout.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }
    /// The flat buffer.
    pub fn as_slice(&self) -> &[T] {
        &self.data
    }
    /// The flat buffer, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.data
    }
    /// The flat buffer, by value.
    pub fn into_vec(self) -> Vec<T> {
        self.data
    }
    /// The tensor called `name` (PyTorch name), row-major.
    pub fn get(&self, name: &str) -> Result<&[T]> {
        let r = self.spec(name)?.range();
        Ok(&self.data[r])
    }
    /// The tensor called `name`, mutable.
    pub fn get_mut(&mut self, name: &str) -> Result<&mut [T]> {
        let r = self.spec(name)?.range();
        Ok(&mut self.data[r])
    }
    fn spec(&self, name: &str) -> Result<&ParamSpec> {
        self.layout
            .find(name)
            .ok_or_else(|| Error::invalid("name", format!("one of the parameter names {}", self.layout.names()), format!("{name:?}")))
    }

    /// The same parameters converted to another element type (rounding to nearest).
    pub fn cast<U: Element>(&self) -> Params<U> {
        Params { layout: self.layout.clone(), data: self.data.iter().map(|v| U::from_f64(v.to_f64())).collect() }
    }
}

impl<T: Float> Params<T> {
    /// The largest absolute value, for reports; 0 for an empty buffer.
    pub fn max_abs(&self) -> f64 {
        self.data.iter().fold(0.0, |m, v| m.max(v.to_f64().abs()))
    }
}

#[cfg(test)]
mod tests {
    use super::ParamLayout;
    use crate::config::{CellKind, RnnConfig};

    #[test]
    fn param_count_is_the_layout_length() {
        for cell in [CellKind::Lstm, CellKind::Gru, CellKind::RnnTanh] {
            for (layers, bi, bias, proj) in [(1, false, true, 0), (2, true, false, 0), (3, true, true, 3)] {
                let proj = if cell == CellKind::Lstm { proj } else { 0 };
                let cfg = RnnConfig::new(cell, 5, 7).num_layers(layers).bidirectional(bi).bias(bias).proj_size(proj).build().unwrap();
                assert_eq!(cfg.param_count(), ParamLayout::new(&cfg).len(), "{cfg:?}");
            }
        }
    }
}
