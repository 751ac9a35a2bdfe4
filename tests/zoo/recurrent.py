"""Recurrent sequence classifiers over (N, T, F) inputs (e.g. the 28 rows of a 28x28 image),
written the way the PyTorch examples and tutorials write them.

Hochreiter & Schmidhuber, "Long Short-Term Memory", Neural Computation 1997; Cho et al.,
"Learning Phrase Representations using RNN Encoder-Decoder for Statistical Machine
Translation", 2014, arXiv:1406.1078 (GRU). ``nn.LSTM``/``nn.GRU`` with ``num_layers=2`` and
``batch_first=True``, a Linear head on the last layer's final hidden state ``h_n[-1]``. The
packed variant reads each sequence's length from its trailing all-zero rows (the padding
``make_batch`` writes) and runs the LSTM on ``pack_padded_sequence``.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence


class RNNClassifier(nn.Module):
    def __init__(self, cell: type[nn.RNNBase], input_size: int = 28, hidden: int = 32,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.rnn = cell(input_size, hidden, num_layers=2, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        _, h = self.rnn(x)
        if isinstance(h, tuple):  # LSTM returns (h_n, c_n)
            h = h[0]
        return self.fc(h[-1])


class PackedLSTMClassifier(RNNClassifier):
    def __init__(self, input_size: int = 28, hidden: int = 32, num_classes: int = 10) -> None:
        super().__init__(nn.LSTM, input_size, hidden, num_classes)

    @staticmethod
    def lengths(x: Tensor) -> Tensor:
        """Index of the last row with a nonzero entry, plus one (at least 1)."""
        nonzero = x.detach().abs().sum(-1) > 0  # (N, T)
        steps = nonzero.cumsum(1).argmax(1) + 1
        return steps.clamp(min=1).cpu()

    def forward(self, x: Tensor) -> Tensor:
        packed = pack_padded_sequence(x, self.lengths(x), batch_first=True,
                                      enforce_sorted=False)
        _, (h, _) = self.rnn(packed)
        return self.fc(h[-1])


def lstm_classifier(num_classes: int = 10) -> RNNClassifier:
    return RNNClassifier(nn.LSTM, num_classes=num_classes)


def gru_classifier(num_classes: int = 10) -> RNNClassifier:
    return RNNClassifier(nn.GRU, num_classes=num_classes)


def packed_lstm_classifier(num_classes: int = 10) -> PackedLSTMClassifier:
    return PackedLSTMClassifier(num_classes=num_classes)
