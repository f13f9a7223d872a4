"""Neural-network building blocks on ``mpdist.autograd``: Module, Parameter, layers, losses.

Parameter initialisation draws from the RNG that ``mpdist.manual_seed`` seeds.
"""

from __future__ import annotations

from mpdist.nn import functional, init
from mpdist.nn.activation import GELU, Sigmoid
from mpdist.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, SyncBatchNorm
from mpdist.nn.containers import ModuleList, ParameterList, Sequential
from mpdist.nn.conv import Conv2d
from mpdist.nn.dropout import Dropout
from mpdist.nn.flatten import Flatten, Unflatten
from mpdist.nn.layers import Identity, Linear, LogSoftmax, ReLU, Softmax, Tanh
from mpdist.nn.loss import CrossEntropyLoss, MSELoss, NLLLoss
from mpdist.nn.module import IncompatibleKeys, Module
from mpdist.nn.normalization import LayerNorm
from mpdist.nn.parameter import Parameter
from mpdist.nn.rnn import LSTM, LSTMCell
from mpdist.nn.sparse import Embedding

__all__ = [
    "LSTM",
    "Conv2d",
    "LSTMCell",
    "GELU",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "CrossEntropyLoss",
    "Dropout",
    "Embedding",
    "Flatten",
    "Identity",
    "IncompatibleKeys",
    "LayerNorm",
    "Linear",
    "LogSoftmax",
    "MSELoss",
    "Module",
    "ModuleList",
    "NLLLoss",
    "Parameter",
    "ParameterList",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "SyncBatchNorm",
    "Tanh",
    "Unflatten",
    "functional",
    "init",
]
