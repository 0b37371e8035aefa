"""Per-epoch training history, shaped like Keras's: `history.history["val_loss"][i]` for epoch history.epoch[i]."""


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

    def plot(self, path=None):
        """Loss (train and validation) and, when recorded, accuracy curves per epoch; saved as an image
        when `path` is given. Returns the matplotlib Figure. Needs matplotlib (pip install fastbp[plot])."""
        try:
            import matplotlib
            if path is not None:
                matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("History.plot needs matplotlib: pip install 'fastbp[plot]'") from None
        if not self.epoch:
            raise ValueError("the history is empty: nothing to plot")
        metrics = [m for m in ("loss", "accuracy") if m in self.history or "val_" + m in self.history]
        fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
        epochs = [e + 1 for e in self.epoch]
        for ax, metric in zip(axes[0], metrics):
            for key, label in ((metric, "train"), ("val_" + metric, "validation")):
                if key in self.history:
                    ax.plot(epochs, self.history[key], marker="o", markersize=3, label=label)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric)
            ax.set_title(metric)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"
