"""Message fields as comparable data, for checking our V2 proto against tritonclient's."""

from __future__ import annotations

from typing import Any


def fields(message: Any) -> dict[str, Any]:
    """Every field of a message type and its nested types: name → [number, type, repeated]."""
    table = {
        f"{message.full_name}.{field.name}": [field.number, field.type, field.is_repeated]
        for field in message.fields
    }
    for nested in message.nested_types:
        table.update(fields(nested))
    return table
