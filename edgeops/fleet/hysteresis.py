"""Alert deduplication: per (device, feature) key, raise after a streak of drifted evaluations
and clear after a streak of clean ones, so one drift does not alert on every evaluation."""
from __future__ import annotations


def drift_key(device_id: str, feature: str) -> str:
    """Hysteresis key of a (device, feature) pair; device ids never hold "|" (docs/telemetry.md)."""
    return f"{device_id}|{feature}"


def split_key(key: str) -> tuple[str, str]:
    device_id, _, feature = key.partition("|")
    return device_id, feature


class Hysteresis:
    """Per key: raise after ``enter_after`` consecutive drifted evaluations, clear after
    ``exit_after`` consecutive clean ones. A key not updated in an evaluation (device offline,
    too few rows) keeps its state. ``to_dict()`` is JSON-ready, for Store.set_state.
    """

    def __init__(self, enter_after: int, exit_after: int, state: dict | None = None):
        for label, value in (("enter_after", enter_after), ("exit_after", exit_after)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a whole number >= 1, got {value!r}")
        self.enter_after, self.exit_after = enter_after, exit_after
        self._keys: dict[str, dict] = {}
        for key, item in ((state or {}).get("keys") or {}).items():
            if not (isinstance(item, dict) and isinstance(item.get("active"), bool)
                    and isinstance(item.get("streak"), int) and item["streak"] >= 0):
                raise ValueError(f"hysteresis state for {key!r} is malformed: {item!r}")
            self._keys[str(key)] = {"active": item["active"], "streak": item["streak"]}

    def update(self, key: str, drifted: bool) -> str | None:
        """Feed one evaluation's verdict; returns "raised", "cleared" or None."""
        item = self._keys.setdefault(key, {"active": False, "streak": 0})
        event = None
        if item["active"] != bool(drifted):  # a verdict against the current state builds a streak
            item["streak"] += 1
            needed = self.exit_after if item["active"] else self.enter_after
            if item["streak"] >= needed:
                item["active"], item["streak"] = not item["active"], 0
                event = "raised" if item["active"] else "cleared"
        else:
            item["streak"] = 0
        if not item["active"] and item["streak"] == 0:
            del self._keys[key]  # the default state: keep the persisted state small
        return event

    def active(self) -> set[str]:
        return {k for k, item in self._keys.items() if item["active"]}

    def to_dict(self) -> dict:
        return {"version": 1, "enter_after": self.enter_after, "exit_after": self.exit_after,
                "keys": {k: dict(item) for k, item in sorted(self._keys.items())}}
