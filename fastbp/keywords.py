"""Misspelt keyword arguments get a suggestion: Trainer(lrate=0.1) -> "did you mean 'lr'?".

Python's own TypeError names neither the public class (an estimator's says `_BaseMLP.__init__()`) nor
the argument that was meant. `suggest_keywords` checks the names before the call, so the call itself and
`inspect.signature` (scikit-learn's get_params reads it) are unchanged.
"""
import difflib
import functools
import inspect


def suggest_keywords(method):
    """Decorates a method: an unknown keyword argument is a TypeError naming the caller's class and the
    closest valid names."""
    parameters = inspect.signature(method).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return method  # takes any keyword: nothing to check
    valid = [name for name, p in parameters.items()
             if name != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL]

    @functools.wraps(method)
    def checked(self, *args, **kwargs):
        for name in kwargs:
            if name not in parameters:
                owner = type(self).__name__
                call = owner if method.__name__ == "__init__" else f"{owner}.{method.__name__}"
                close = difflib.get_close_matches(name, valid, n=2, cutoff=0.5)
                hint = (f"; did you mean {' or '.join(repr(c) for c in close)}?" if close
                        else f"; valid keywords: {', '.join(valid)}")
                raise TypeError(f"{call}() got an unexpected keyword argument {name!r}{hint}")
        return method(self, *args, **kwargs)

    return checked
