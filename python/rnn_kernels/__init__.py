"""RNN, LSTM and GRU kernels with PyTorch-compatible parameters and full backpropagation through time.

The NumPy API (everything here) is the extension module ``rnn_kernels._native``:

- ``Config(mode, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
  bidirectional=False, proj_size=0, dropout=0.0)``: a validated configuration, with
  ``param_specs()`` (PyTorch's names, shapes and offsets in the flat parameter buffer).
- ``Model(config, params, backend="cpu", threads=None, isa=None)``: the parameters planned on
  a backend (``"reference"``: float32 or float64; ``"cpu"``: float32; ``"cuda"``, in a wheel
  built with CUDA: float32 on the GPU), with ``forward``,
  ``forward_training`` (masks from a seed, or the caller's: ``masks=``), ``backward``,
  ``update_params``, ``params``, and ``mask_sites`` / ``read_masks`` (the masks a training
  pass reads, and a seed's).
- ``Reserve``: what a training forward pass keeps for backward.
- ``Steps`` / ``BackwardSteps``: a decoder run one step at a time (``Model.start_steps``,
  ``steps.step(x)``, ``steps.reorder(rows)``) and its backward (``Model.backward_steps``).
- ``AttentionConfig(score, query_size, key_size, attn_size=None, output_size=None)`` and
  ``Attention(config, params, backend="cpu", threads=None)`` (``"cuda"`` too): Luong's (dot, general, concat)
  and Bahdanau's (additive) attention with a length-masked softmax and the attentional hidden
  state ``tanh(W_c [c; q])``: ``memory(keys, lengths)``, ``forward``, ``forward_training``
  (its outputs and an ``AttentionSaved``, what ``backward(..., saved=...)`` needs to skip
  recomputing the forward), ``backward``.
- ``load_safetensors`` / ``save_safetensors``, ``available_isas``, ``default_isa``, ``backends``.

Tensors follow the library's conventions: ``x: [T, B, I]`` (``[B, T, I]`` batch-first),
``y: [T, B, D*Hout]``, ``h0``/``hn: [L*D, B, Hout]``, ``c0``/``cn: [L*D, B, H]`` (LSTM only),
``lengths``: one length in ``1..=T`` per sequence, any order (PyTorch's packed sequences).

``rnn_kernels.torch`` (with PyTorch installed) is the ``torch.nn`` layer on top.
"""

from ._native import (
    Attention,
    AttentionConfig,
    AttentionMemory,
    AttentionSaved,
    BackwardSteps,
    Config,
    Model,
    Reserve,
    Steps,
    __version__,
    available_isas,
    backends,
    default_isa,
    load_safetensors,
    save_safetensors,
)

__all__ = [
    "Attention",
    "AttentionConfig",
    "AttentionMemory",
    "AttentionSaved",
    "BackwardSteps",
    "Config",
    "Model",
    "Reserve",
    "Steps",
    "__version__",
    "available_isas",
    "backends",
    "default_isa",
    "load_safetensors",
    "save_safetensors",
]
