"""``/api/upstreams``: list, read, create, replace, merge-patch and delete upstreams.

The behaviour shared with the other kinds of item is in ``items.py``.
"""

from __future__ import annotations

from aiohttp import web

from isekai.admin import items

__all__ = ["create", "delete", "get", "list_all", "patch", "replace"]

KIND = items.UPSTREAM


async def list_all(request: web.Request) -> web.Response:
    return await items.list_items(request, KIND)


async def get(request: web.Request) -> web.Response:
    return await items.get_item(request, KIND)


async def create(request: web.Request) -> web.Response:
    return await items.create_item(request, KIND)


async def replace(request: web.Request) -> web.Response:
    return await items.replace_item(request, KIND)


async def patch(request: web.Request) -> web.Response:
    return await items.patch_item(request, KIND)


async def delete(request: web.Request) -> web.Response:
    return await items.delete_item(request, KIND)
