"""The stored formats' versions: what is current passes, a development file or one of a format with no
upgrade path is refused with the command that remakes it, and upgrades run one version at a time."""

import pytest

from lakehouse.contracts.formats import Format, OtherFormat


def _step(n: int):  # noqa: ANN202
    return lambda target: target.append(n)


def test_steps_chain_one_version_at_a_time_to_the_current_one() -> None:
    fmt: Format[list[int]] = Format("a thing", 4, "remake it", {2: _step(3), 3: _step(4)})
    done: list[int] = []
    for step in fmt.steps(2, "x"):
        step(done)
    assert done == [3, 4]
    assert fmt.steps(4, "x") == [] and fmt.upgradable(3) and not fmt.upgradable(1)


@pytest.mark.parametrize(("found", "says"), [
    (None, "x is a thing of a development build (before release 1); this release reads format v4. Make it again "
           "with `remake it`"),
    (1, "x is a thing format v1, which this release cannot upgrade to v4. Make it again with `remake it`"),
    (5, "x is a thing format v5, newer than this release reads (v4)"),
])
def test_what_cannot_be_carried_forward_is_refused_with_the_remake_command(found: int | None, says: str) -> None:
    fmt: Format[list[int]] = Format("a thing", 4, "remake it", {2: _step(3), 3: _step(4)})
    with pytest.raises(OtherFormat) as refused:
        fmt.steps(found, "x")
    assert str(refused.value).startswith(says)
