"""A trained network out of fastbp and back: PyTorch modules and ONNX files.

- to_torch(trainer) -> torch.nn.Sequential of Linear layers with the hidden activation between them (the
  output layer linear, as in fastbp: the loss holds the softmax or sigmoid), float32, the same weights
  (Linear.weight is W^T: PyTorch stores (fan_out, fan_in)).
- from_torch(model, **options) -> Trainer: the reverse, for such a Sequential (a fine-tuned model coming
  back, or one built in PyTorch); options are the Trainer's own (loss, optimizer, lr, ...).
- to_onnx(trainer, path, probabilities=True): an ONNX model (opset 17) of Gemm + activation nodes, input
  "input" (batch, sizes[0]) float32 with a free batch dimension, output "output": with probabilities,
  what Trainer.predict returns (softmax for cross_entropy, sigmoid for bce, exp for poisson, the raw
  outputs for mse),
  else the logits. Written as checkpoints are (a temporary file beside path, renamed over it): a reader
  never sees half a model.

torch, onnx (and onnxruntime, to run the file) are optional: pip install "fastbp[torch]" / "fastbp[onnx]".
"""
import os

import numpy as np

from . import checkpoint
from .options import LEAKY_SLOPE

ONNX_OPSET = 17
_ONNX_ACTIVATIONS = {"relu": "Relu", "leaky_relu": "LeakyRelu", "tanh": "Tanh", "sigmoid": "Sigmoid"}


def _torch():
    """PyTorch, or an ImportError that says how to install it."""
    try:
        import torch
    except ImportError:
        raise ImportError("exporting to or importing from PyTorch needs PyTorch: pip install 'fastbp[torch]' "
                          "(or torch itself, e.g. pip install torch)") from None
    return torch


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("exporting to ONNX needs the onnx package: pip install 'fastbp[onnx]'") from None
    return onnx


def torch_activation(name):
    """The torch.nn module for one of fastbp's activation names."""
    torch = _torch()
    return {"identity": torch.nn.Identity, "relu": torch.nn.ReLU, "tanh": torch.nn.Tanh,
            "sigmoid": torch.nn.Sigmoid,
            "leaky_relu": lambda: torch.nn.LeakyReLU(negative_slope=LEAKY_SLOPE)}[name]()


def sequential(params, activation):
    """nn.Sequential holding params [(W (fan_in, fan_out), b (fan_out,)), ...] as float32 Linear layers
    with `activation` between them."""
    torch = _torch()
    layers = []
    with torch.no_grad():
        for l, (W, b) in enumerate(params):
            linear = torch.nn.Linear(W.shape[0], W.shape[1])
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(np.asarray(W, np.float32).T)))
            linear.bias.copy_(torch.from_numpy(np.asarray(b, np.float32)))
            layers.append(linear)
            if l < len(params) - 1:
                layers.append(torch_activation(activation))
    return torch.nn.Sequential(*layers)


def to_torch(trainer):
    return sequential(trainer.params, trainer.config.activation)


def _activation_name(module):
    """fastbp's name for a hidden activation module, or ValueError naming what fastbp cannot take."""
    torch = _torch()
    kinds = {torch.nn.ReLU: "relu", torch.nn.Tanh: "tanh", torch.nn.Sigmoid: "sigmoid", torch.nn.Identity: "identity"}
    if isinstance(module, torch.nn.LeakyReLU):
        if module.negative_slope != LEAKY_SLOPE:
            raise ValueError(f"LeakyReLU(negative_slope={module.negative_slope}): fastbp's leaky_relu has slope "
                             f"{LEAKY_SLOPE}")
        return "leaky_relu"
    for cls, name in kinds.items():
        if type(module) is cls:
            return name
    raise ValueError(f"{type(module).__name__} between the Linear layers: fastbp takes ReLU, LeakyReLU, Tanh, "
                     "Sigmoid or Identity (one kind for every hidden layer)")


def layers_of(model):
    """(params, activation) of a torch Sequential of Linear layers with one kind of activation between them
    and a Linear last; ValueError for anything fastbp's network cannot represent."""
    torch = _torch()
    if not isinstance(model, torch.nn.Sequential):
        raise TypeError(f"from_torch takes a torch.nn.Sequential, got {type(model).__name__}")
    modules = list(model)
    if not modules or not isinstance(modules[-1], torch.nn.Linear):
        last = type(modules[-1]).__name__ if modules else "nothing"
        raise ValueError(f"the model ends with {last}: fastbp's output layer is a Linear layer (the loss "
                         "applies the softmax or sigmoid); remove the output activation")
    params, activations = [], set()
    for i, m in enumerate(modules):  # Linear, activation, Linear, ..., Linear
        if i % 2 == 0:
            if not isinstance(m, torch.nn.Linear):
                raise ValueError(f"module {i} is {type(m).__name__} where a Linear layer belongs: fastbp takes Linear "
                                 "layers with exactly one activation module between each two")
            if m.bias is None:
                raise ValueError(f"module {i} is a Linear layer without bias: fastbp's layers all have one")
            params.append((_host_array(m.weight, i, "weight", torch).T.copy(), _host_array(m.bias, i, "bias", torch)))
        elif isinstance(m, torch.nn.Linear):
            raise ValueError(f"modules {i - 1} and {i} are Linear layers with no activation between them")
        else:
            activations.add(_activation_name(m))
    if len(activations) > 1:
        raise ValueError(f"several kinds of activation ({', '.join(sorted(activations))}): fastbp uses one for "
                         "every hidden layer")
    for (W, _), (W_next, _) in zip(params[:-1], params[1:]):
        if W.shape[1] != W_next.shape[0]:
            raise ValueError(f"a Linear layer's {W.shape[1]} outputs feed one taking {W_next.shape[0]} inputs")
    return params, (activations.pop() if activations else "relu")


def _host_array(tensor, index, what, torch):
    """A Linear layer's weight or bias as a float32 NumPy copy; ValueError for values fastbp cannot take
    (none at all on the meta device, complex numbers, anything PyTorch cannot bring to the CPU)."""
    if tensor.is_meta:
        raise ValueError(f"module {index}'s {what} is on the meta device and holds no values: materialize the "
                         "model first (e.g. model.to_empty(device='cpu'), then load its state dict)")
    if tensor.is_complex() or not tensor.is_floating_point():
        raise ValueError(f"module {index}'s {what} has dtype {tensor.dtype}: fastbp takes real floating point")
    try:
        return tensor.detach().cpu().to(torch.float32).numpy().copy()
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        raise ValueError(f"module {index}'s {what} cannot be copied to the CPU: {exc}") from None


def from_torch(model, **options):
    from .trainer import Trainer
    params, activation = layers_of(model)
    if "activation" in options and options["activation"] != activation:
        raise ValueError(f"activation={options['activation']!r}, but the model's is {activation!r}")
    options["activation"] = activation
    sizes = [params[0][0].shape[0]] + [W.shape[1] for W, _ in params]
    trainer = Trainer(sizes, **options)
    trainer.set_params(params)
    return trainer


def onnx_model(params, activation, loss, probabilities=True):
    """The onnx.ModelProto of the network (see the module docstring)."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper
    nodes, initializers = [], []
    current = "input"
    for l, (W, b) in enumerate(params):
        initializers += [numpy_helper.from_array(np.asarray(W, np.float32), f"W{l}"),
                         numpy_helper.from_array(np.asarray(b, np.float32), f"b{l}")]
        out = f"z{l}"
        nodes.append(helper.make_node("Gemm", [current, f"W{l}", f"b{l}"], [out], name=f"dense{l}"))
        current = out
        if l < len(params) - 1 and activation != "identity":
            act_out = f"a{l}"
            extra = {"alpha": LEAKY_SLOPE} if activation == "leaky_relu" else {}
            nodes.append(helper.make_node(_ONNX_ACTIVATIONS[activation], [current], [act_out], name=f"act{l}",
                                          **extra))
            current = act_out
    transform = {"cross_entropy": ("Softmax", {"axis": 1}), "bce": ("Sigmoid", {}), "poisson": ("Exp", {})}.get(loss)
    if probabilities and transform is not None:
        nodes.append(helper.make_node(transform[0], [current], ["output"], name="output_transform", **transform[1]))
    else:
        nodes.append(helper.make_node("Identity", [current], ["output"], name="output"))
    graph = helper.make_graph(
        nodes, "fastbp_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", params[0][0].shape[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", params[-1][0].shape[1]])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="fastbp")
    onnx.checker.check_model(model)
    return model


def to_onnx(trainer, path, probabilities=True):
    """Writes the model to path atomically (checkpoint.write_atomically, as checkpoints are); returns path."""
    model = onnx_model(trainer.params, trainer.config.activation, trainer.config.loss, probabilities)
    checkpoint.write_atomically(path, lambda f: f.write(model.SerializeToString()))
    return os.fspath(path)
