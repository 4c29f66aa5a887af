"""One place for the `with` protocol of everything that holds a file map or C
memory: `close()` frees it, and is safe to call twice."""


class Closable:
    """`with obj:` closes obj on the way out."""

    def close(self):
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class OwnsC(Closable):
    """Also closes when garbage-collected, for objects owning C allocations."""

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
