"""Per-epoch training history, shaped like Keras's: `history.history["val_loss"][epoch]`."""


class History:
    def __init__(self):
        self.history = {}
        self.epoch = []

    def record(self, epoch, **values):
        self.epoch.append(epoch)
        for key, value in values.items():
            self.history.setdefault(key, []).append(float(value))

    def __getitem__(self, key):
        return self.history[key]

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"
