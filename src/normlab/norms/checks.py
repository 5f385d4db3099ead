"""Parameter checks shared by the norm builders: one-line ValueErrors that name the valid values.

Every builder validates its parameters with these before it constructs a layer, so a bad
`norm.<param>=` fails at build time with the same wording whatever the method.
"""

from __future__ import annotations


def check_positive(name: str, key: str, value: float) -> None:
    """Refuse a `key` that is not > 0."""
    if not float(value) > 0.0:
        raise ValueError(f"{name}: {key} must be > 0, got {value}")


def check_eps(name: str, eps: float) -> None:
    """Refuse a non-positive eps."""
    check_positive(name, "eps", eps)


def check_momentum(name: str, momentum: float | None, allow_none: bool = True) -> None:
    """Refuse a momentum outside (0, 1] (None allowed where a cumulative average is)."""
    if momentum is None and allow_none:
        return
    if momentum is None or not 0.0 < float(momentum) <= 1.0:
        extra = " or null (cumulative average)" if allow_none else ""
        raise ValueError(f"{name}: momentum must be in (0, 1]{extra}, got {momentum}")


def divisors(n: int) -> list[int]:
    """The positive divisors of n: the valid group counts (and group sizes) for n channels."""
    return [d for d in range(1, n + 1) if n % d == 0]


def check_groups(name: str, num_channels: int, groups: int) -> None:
    """Refuse a group count that does not divide the channel count."""
    if not isinstance(groups, int) or groups < 1 or num_channels % groups:
        raise ValueError(
            f"{name}: groups={groups!r} does not divide num_channels={num_channels}; "
            f"valid groups: {', '.join(map(str, divisors(num_channels)))}"
        )


def resolve_groups(name: str, num_channels: int, groups: int | None, group_size: int | None) -> int:
    """Number of groups from `groups` or `group_size`, which must divide the channel count."""
    if (groups is None) == (group_size is None):
        raise ValueError(f"{name}: set exactly one of groups or group_size (the other to null)")
    choices = ", ".join(map(str, divisors(num_channels)))
    if group_size is not None:
        if group_size < 1 or num_channels % group_size:
            raise ValueError(
                f"{name}: group_size={group_size} does not divide num_channels={num_channels}; "
                f"valid group sizes: {choices}"
            )
        return num_channels // group_size
    assert groups is not None
    if groups < 1 or num_channels % groups:
        raise ValueError(
            f"{name}: groups={groups} does not divide num_channels={num_channels}; "
            f"valid groups: {choices} (or set group_size)"
        )
    return groups


def check_fraction(name: str, key: str, value: float, meaning: str = "") -> None:
    """Refuse a `key` outside [0, 1] (`meaning` says what its ends mean)."""
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name}: {key} must be in [0, 1]{meaning}, got {value}")


def check_divides_batch(name: str, key: str, value: int, batch_size: int, advice: str) -> None:
    """Refuse a per-device batch that `key` (samples normalized together) does not divide."""
    if batch_size % value:
        raise ValueError(
            f"{name}: {key}={value} does not divide the per-device batch {batch_size}; {advice}"
        )


def check_int(name: str, key: str, value: object, minimum: int, meaning: str = "") -> None:
    """Refuse a `key` that is not an int >= `minimum` (`meaning` says what it counts)."""
    if not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: {key} must be an int >= {minimum}{meaning}, got {value!r}")
