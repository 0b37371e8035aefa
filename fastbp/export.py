"""A trained network out of fastbp and back: PyTorch modules and ONNX files.

- to_torch(trainer) -> torch.nn.Sequential of Linear layers with each hidden layer's activation after it (the
  output layer linear, as in fastbp: the loss holds the softmax or sigmoid), float32, the same weights
  (Linear.weight is W^T: PyTorch stores (fan_out, fan_in)).
- from_torch(model, **options) -> (sizes, params, options): the reverse, for such a Sequential (a fine-tuned
  model coming back, or one built in PyTorch), what Trainer.from_torch builds its Trainer from; options are
  the Trainer's own (loss, optimizer, lr, ...).
- to_onnx(trainer, path, probabilities=True): an ONNX model (opset 17) of Gemm + activation nodes (GELU and
  SiLU, which opset 17 lacks, composed of Erf/Tanh/Sigmoid and arithmetic), input
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
from .options import LEAKY_SLOPE, Config

ONNX_OPSET = 17
# Activations that are one ONNX operator (with its attributes); gelu, gelu_tanh and silu are composed.
_ONNX_ACTIVATIONS = {"relu": ("Relu", {}), "leaky_relu": ("LeakyRelu", {"alpha": LEAKY_SLOPE}),
                     "tanh": ("Tanh", {}), "sigmoid": ("Sigmoid", {}), "elu": ("Elu", {"alpha": 1.0}),
                     "softplus": ("Softplus", {})}


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
            "sigmoid": torch.nn.Sigmoid, "elu": torch.nn.ELU, "softplus": torch.nn.Softplus,
            "gelu": torch.nn.GELU, "gelu_tanh": lambda: torch.nn.GELU(approximate="tanh"), "silu": torch.nn.SiLU,
            "leaky_relu": lambda: torch.nn.LeakyReLU(negative_slope=LEAKY_SLOPE)}[name]()


def _hidden_activations(params, activation):
    """One activation name per hidden layer of params, from one name or a list of them."""
    sizes = [np.shape(params[0][0])[0]] + [np.shape(W)[1] for W, _ in params]
    return Config(sizes=sizes, activation=activation).hidden_activations


def sequential(params, activation):
    """nn.Sequential holding params [(W (fan_in, fan_out), b (fan_out,)), ...] as float32 Linear layers
    with `activation` (one name, or one per hidden layer) after each but the last."""
    torch = _torch()
    activations = _hidden_activations(params, activation)
    layers = []
    with torch.no_grad():
        for l, (W, b) in enumerate(params):
            linear = torch.nn.Linear(W.shape[0], W.shape[1])
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(np.asarray(W, np.float32).T)))
            linear.bias.copy_(torch.from_numpy(np.asarray(b, np.float32)))
            layers.append(linear)
            if l < len(params) - 1:
                layers.append(torch_activation(activations[l]))
    return torch.nn.Sequential(*layers)


def to_torch(trainer):
    return sequential(trainer.params, trainer.config.activation)


def _activation_name(module):
    """fastbp's name for a hidden activation module, or ValueError naming what fastbp cannot take."""
    torch = _torch()
    kinds = {torch.nn.ReLU: "relu", torch.nn.Tanh: "tanh", torch.nn.Sigmoid: "sigmoid", torch.nn.Identity: "identity",
             torch.nn.SiLU: "silu"}
    if isinstance(module, torch.nn.LeakyReLU):
        if module.negative_slope != LEAKY_SLOPE:
            raise ValueError(f"LeakyReLU(negative_slope={module.negative_slope}): fastbp's leaky_relu has slope "
                             f"{LEAKY_SLOPE}")
        return "leaky_relu"
    if type(module) is torch.nn.ELU:
        if module.alpha != 1.0:
            raise ValueError(f"ELU(alpha={module.alpha}): fastbp's elu has alpha 1")
        return "elu"
    if type(module) is torch.nn.Softplus:
        if module.beta != 1.0 or module.threshold != 20.0:
            raise ValueError(f"Softplus(beta={module.beta}, threshold={module.threshold}): fastbp's softplus has "
                             "beta 1 and threshold 20")
        return "softplus"
    if type(module) is torch.nn.GELU:
        return "gelu_tanh" if module.approximate == "tanh" else "gelu"
    for cls, name in kinds.items():
        if type(module) is cls:
            return name
    raise ValueError(f"{type(module).__name__} between the Linear layers: fastbp takes ReLU, LeakyReLU, Tanh, "
                     "Sigmoid, ELU, Softplus, GELU, SiLU or Identity")


def layers_of(model):
    """(params, activation) of a torch Sequential of Linear layers with one activation module between each
    two and a Linear last; activation is one name when every hidden layer has the same, else a list of one
    per hidden layer. ValueError for anything fastbp's network cannot represent."""
    torch = _torch()
    if not isinstance(model, torch.nn.Sequential):
        raise TypeError(f"from_torch takes a torch.nn.Sequential, got {type(model).__name__}")
    modules = list(model)
    if not modules or not isinstance(modules[-1], torch.nn.Linear):
        last = type(modules[-1]).__name__ if modules else "nothing"
        raise ValueError(f"the model ends with {last}: fastbp's output layer is a Linear layer (the loss "
                         "applies the softmax or sigmoid); remove the output activation")
    params, activations = [], []
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
            activations.append(_activation_name(m))
    for (W, _), (W_next, _) in zip(params[:-1], params[1:]):
        if W.shape[1] != W_next.shape[0]:
            raise ValueError(f"a Linear layer's {W.shape[1]} outputs feed one taking {W_next.shape[0]} inputs")
    if len(set(activations)) > 1:
        return params, activations
    return params, (activations[0] if activations else "relu")


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
    """(sizes, [(W, b) per layer], options) of a Trainer holding the model's network: the options given,
    with the model's activation unless they name the same one. Trainer.from_torch builds it (this module
    does not import the Trainer)."""
    params, activation = layers_of(model)
    if "activation" in options and (_hidden_activations(params, options["activation"])
                                    != _hidden_activations(params, activation)):
        raise ValueError(f"activation={options['activation']!r}, but the model's is {activation!r}")
    options.setdefault("activation", activation)
    sizes = [params[0][0].shape[0]] + [W.shape[1] for W, _ in params]
    return sizes, params, options


def _composed_activation(name, x, out, tag, helper, numpy_helper):
    """(nodes, initializers) computing activation `name` of tensor x into out with opset-17 operators:
    gelu = x * 0.5 * (1 + erf(x / sqrt 2)); gelu_tanh = x * 0.5 * (1 + tanh(k (x + c x^3))); silu = x sigmoid(x)."""
    def const(suffix, value):
        return numpy_helper.from_array(np.array(value, np.float32), f"{tag}_{suffix}")
    node = helper.make_node
    if name == "silu":
        return [node("Sigmoid", [x], [f"{tag}_s"]), node("Mul", [x, f"{tag}_s"], [out])], []
    if name == "gelu":
        inits = [const("inv_sqrt2", 1 / np.sqrt(2)), const("one", 1.0), const("half", 0.5)]
        nodes = [node("Mul", [x, f"{tag}_inv_sqrt2"], [f"{tag}_u"]), node("Erf", [f"{tag}_u"], [f"{tag}_t"])]
    else:  # gelu_tanh
        inits = [const("c", 0.044715), const("k", np.sqrt(2 / np.pi)), const("one", 1.0), const("half", 0.5)]
        nodes = [node("Mul", [x, x], [f"{tag}_x2"]), node("Mul", [f"{tag}_x2", x], [f"{tag}_x3"]),
                 node("Mul", [f"{tag}_x3", f"{tag}_c"], [f"{tag}_cx3"]), node("Add", [x, f"{tag}_cx3"], [f"{tag}_p"]),
                 node("Mul", [f"{tag}_p", f"{tag}_k"], [f"{tag}_u"]), node("Tanh", [f"{tag}_u"], [f"{tag}_t"])]
    nodes += [node("Add", [f"{tag}_t", f"{tag}_one"], [f"{tag}_1pt"]), node("Mul", [x, f"{tag}_1pt"], [f"{tag}_xp"]),
              node("Mul", [f"{tag}_xp", f"{tag}_half"], [out])]
    return nodes, inits


def onnx_model(params, activation, loss, probabilities=True):
    """The onnx.ModelProto of the network (see the module docstring); activation: one name or one per
    hidden layer."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper
    activations = _hidden_activations(params, activation)
    nodes, initializers = [], []
    current = "input"
    for l, (W, b) in enumerate(params):
        initializers += [numpy_helper.from_array(np.asarray(W, np.float32), f"W{l}"),
                         numpy_helper.from_array(np.asarray(b, np.float32), f"b{l}")]
        out = f"z{l}"
        nodes.append(helper.make_node("Gemm", [current, f"W{l}", f"b{l}"], [out], name=f"dense{l}"))
        current = out
        if l < len(params) - 1 and activations[l] != "identity":
            act_out = f"a{l}"
            if activations[l] in _ONNX_ACTIVATIONS:
                op, attributes = _ONNX_ACTIVATIONS[activations[l]]
                nodes.append(helper.make_node(op, [current], [act_out], name=f"act{l}", **attributes))
            else:
                more_nodes, more_inits = _composed_activation(activations[l], current, act_out, f"act{l}", helper,
                                                              numpy_helper)
                nodes += more_nodes
                initializers += more_inits
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
