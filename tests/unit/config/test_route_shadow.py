"""`rules.route_shadows` against the real router: for random pairs of routes, the check says
"shadows" exactly when some request the old route gets alone goes to the new one once a
router holds both."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isekai._core.router import Router
from isekai.config.rules import route_shadows
from isekai.config.schema import RouteMatch
from isekai.errors import RouteConflictError

SEGMENTS = ["a", "b", "{p}", "{q}"]
HOSTS = [None, "x.com", "a.x.com", "y.com", "*.x.com", "*.a.x.com", "*.y.com"]
METHODS = [None, ("GET",), ("HEAD",), ("POST",), ("GET", "POST"), ("GET", "HEAD")]
# request parts: every static segment of the patterns, another value, and the empty segment
PATH_SEGMENTS = ["a", "b", "c", ""]
PATHS = [
    "/" + "/".join(parts)
    for size in range(1, 5)
    for parts in itertools.product(PATH_SEGMENTS, repeat=size)
]
REQUEST_HOSTS = [b"x.com", b"a.x.com", b"b.a.x.com", b"y.com", b"z.y.com", b"other.org", b""]
REQUEST_METHODS = [b"GET", b"HEAD", b"POST", b"PUT"]


@st.composite
def patterns(draw):
    size = draw(st.integers(1, 3))
    parts = []
    for i in range(size):
        choices = [s for s in SEGMENTS if s not in parts]
        if i == size - 1:
            choices += ["*", ""]
        parts.append(draw(st.sampled_from(choices)))
    if parts == [""]:
        return "/"
    return "/" + "/".join(parts)


@st.composite
def matches(draw):
    return RouteMatch(
        path=draw(patterns()),
        host=draw(st.sampled_from(HOSTS)),
        methods=draw(st.sampled_from(METHODS)),
    )


def _add(router: Router, match: RouteMatch, value: str) -> None:
    router.add(match.host, match.methods, match.pattern, value)


def _taken(new: RouteMatch, old: RouteMatch) -> list[tuple[bytes, bytes, str]] | None:
    """The requests ``old`` gets alone and ``new`` gets once both are there (None: a router
    refuses the pair as a conflict)."""
    alone, both = Router(), Router()
    _add(alone, old, "old")
    _add(both, old, "old")
    try:
        _add(both, new, "new")
    except RouteConflictError:
        return None
    moved = []
    for host, method, path in itertools.product(REQUEST_HOSTS, REQUEST_METHODS, PATHS):
        before = alone.match(host, method, path.encode())
        if before is None or before[0] != "old":
            continue
        after = both.match(host, method, path.encode())
        if after is not None and after[0] == "new":
            moved.append((host, method, path))
    return moved


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(new=matches(), old=matches())
def test_route_shadows_agrees_with_the_router(new, old):
    moved = _taken(new, old)
    if moved is None:
        assert route_shadows(new, old)  # a tie always counts as taking traffic
        return
    if not route_shadows(new, old):
        assert moved == [], f"{new} took {moved[:5]} from {old}"
    else:
        assert moved, f"{new} said to shadow {old}, but takes nothing"


@pytest.mark.parametrize(
    "new, old, shadows",
    [
        (("/users/me", None, None), ("/users/{id}", None, None), True),
        (("/users/{id}", None, None), ("/users/me", None, None), False),
        (("/static/app.js", None, None), ("/static/*", None, None), True),
        (("/static/*", None, None), ("/static/app.js", None, None), False),
        (("/static", None, None), ("/static/*", None, None), False),
        (("/users", "api.example.com", None), ("/users", None, None), True),
        (("/*", "api.example.com", None), ("/users", None, None), True),
        (("/users", "api.example.com", None), ("/users", "other.example.com", None), False),
        (("/x", "*.a.example.com", None), ("/x", "*.example.com", None), True),
        (("/x", "*.example.com", None), ("/x", "*.a.example.com", None), False),
        (("/users/me", None, ("POST",)), ("/users/{id}", None, ("GET",)), False),
        (("/users", None, ("HEAD",)), ("/users", None, ("GET",)), True),
        (("/users", None, ("POST",)), ("/users", None, ("GET",)), False),
        (("/users", None, None), ("/users", None, ("GET",)), False),
        (("/users", None, ("GET",)), ("/users", None, None), True),
        (("/a/{x}", None, None), ("/{y}/b", None, None), True),
        (("/{y}/b", None, None), ("/a/{x}", None, None), False),
    ],
)
def test_route_shadows_examples(new, old, shadows):
    def match(spec):
        return RouteMatch(path=spec[0], host=spec[1], methods=spec[2])

    assert route_shadows(match(new), match(old)) is shadows
