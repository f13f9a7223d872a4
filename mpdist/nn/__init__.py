"""Neural-network building blocks on ``mpdist.autograd``: Module, Parameter, layers, losses.

Parameter initialisation draws from the RNG that ``mpdist.manual_seed`` seeds.
"""

from __future__ import annotations

from mpdist.nn import functional, init
from mpdist.nn.containers import ModuleList, ParameterList, Sequential
from mpdist.nn.conv import Conv2d
from mpdist.nn.layers import Identity, Linear, LogSoftmax, ReLU, Softmax, Tanh
from mpdist.nn.loss import MSELoss
from mpdist.nn.module import IncompatibleKeys, Module
from mpdist.nn.parameter import Parameter
from mpdist.nn.rnn import LSTM, LSTMCell

__all__ = [
    "LSTM",
    "Conv2d",
    "LSTMCell",
    "Identity",
    "IncompatibleKeys",
    "Linear",
    "LogSoftmax",
    "MSELoss",
    "Module",
    "ModuleList",
    "Parameter",
    "ParameterList",
    "ReLU",
    "Sequential",
    "Softmax",
    "Tanh",
    "functional",
    "init",
]
