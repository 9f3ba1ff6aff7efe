"""The wire API: the generated stubs of both protos (`convserve.api.pb`, written by
`make proto`, never edited) and the one codec that both sides use (`convserve.api.codec`)."""

__all__ = ["codec", "pb"]
