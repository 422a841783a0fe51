"""Waiting on a page with failures that say what the page showed."""

from __future__ import annotations

from playwright.sync_api import Error, Locator, Page, expect


def page_text(page: Page, chars: int = 3000) -> str:
    """The page's visible text (its first ``chars`` characters), for failure messages."""
    try:
        return page.locator("body").inner_text(timeout=5_000)[:chars]
    except Error as exc:  # a page that is gone or navigating still gets a message
        return f"<no text: {exc}>"


def expect_visible(page: Page, locator: Locator, what: str, timeout: float) -> None:
    """Wait up to ``timeout`` seconds for ``locator``; fail naming ``what`` with the page's text."""
    try:
        expect(locator).to_be_visible(timeout=timeout * 1000)
    except AssertionError as exc:
        raise AssertionError(
            f"{what}: not visible after {timeout:.0f}s at {page.url}; the page shows:\n"
            f"{page_text(page)}"
        ) from exc
