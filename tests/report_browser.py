"""Open a Snakemake HTML report in headless Chromium (Debian's /usr/bin/chromium through the
`playwright` package, no browser download) and walk it the way a reviewer would: every category,
every label combination, every item shown, with page errors and console errors recorded."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]
# A shown item is a data: URI carrying its file name (images in <img>, HTML in <iframe>).
ITEM = 'img[src*=";filename="]:not([src*="filename=logo.svg"]), iframe[src*=";filename="]'
HEADLINE_WIDTHS = (1280, 1400)  # common window widths the start page's headline table must fit at


@dataclass
class Item:
    category: str
    labels: dict[str, str]
    filename: str
    kind: str  # "image" or "html"
    loaded: bool  # image: decoded with a non-zero size; html: a table with data rows
    detail: str = ""


@dataclass
class Walk:
    description: str = ""
    description_top: float = 0.0  # where the description's title starts; < 0: clipped off the top
    # window width -> how far the headline table's right edge runs past the workflow graph's left
    # edge, in pixels (> 0: under the graph's labels)
    headline_overlap: dict[int, float] = field(default_factory=dict)
    categories: list[str] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    screenshots: list[Path] = field(default_factory=list)


def _categories(page: Page) -> list[str]:
    """The entries under RESULTS in the report's menu."""
    return page.evaluate(
        """() => {
            const items = [...document.querySelectorAll('nav ul li')].map(li => li.textContent.trim());
            const start = items.findIndex(text => text.toLowerCase() === 'results');
            return start < 0 ? [] : items.slice(start + 1);
        }"""
    )


def _show(page: Page, previous: str | None) -> tuple[str, str, bool, str]:
    """Wait for the shown item to change from `previous`; (filename, kind, loaded, detail)."""
    page.wait_for_function(
        """([selector, previous]) => {
            const el = document.querySelector(selector);
            return el && el.getAttribute('src') !== previous;
        }""",
        arg=[ITEM, previous],
        timeout=10_000,
    )
    element = page.locator(ITEM).first
    src = element.get_attribute("src")
    filename = re.search(r";filename=([^;]+);", src).group(1)
    if element.evaluate("e => e.tagName") == "IMG":
        element.evaluate("e => e.decode().catch(() => null)")
        width, height = element.evaluate("e => [e.naturalWidth, e.naturalHeight]")
        return filename, "image", width > 0 and height > 0, f"{width}x{height}"
    frame = element.element_handle().content_frame()
    frame.wait_for_load_state()
    rows = frame.evaluate("() => document.querySelectorAll('table tbody tr').length")
    return filename, "html", rows > 0, f"{rows} table rows"


def walk_report(html: Path, shots: Path) -> Walk:
    """Open `html`, record the workflow description, then show every item of every category;
    screenshots (one of the start page, one per category) go to `shots`."""
    shots.mkdir(parents=True, exist_ok=True)
    walk = Walk()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda err: walk.errors.append(f"page error: {err}"))
            page.on(
                "console",
                lambda msg: walk.errors.append(f"console error: {msg.text}") if msg.type == "error" else None,
            )
            page.goto(html.as_uri())
            page.get_by_text("Headline results").wait_for()
            walk.description = page.locator("#app").inner_text()
            document = page.locator(".document").first
            walk.description_top = document.evaluate("e => e.getBoundingClientRect().top")
            walk.screenshots.append(_screenshot(page, shots / "workflow.png"))
            for width in HEADLINE_WIDTHS:
                page.set_viewport_size({"width": width, "height": 1000})
                walk.headline_overlap[width] = _headline_overlap(page)
                walk.screenshots.append(_screenshot(page, shots / f"workflow-{width}.png"))
            page.set_viewport_size({"width": 1400, "height": 900})
            walk.categories = _categories(page)
            for category in walk.categories:
                page.goto(html.as_uri())
                page.get_by_role("link", name=category, exact=True).click()
                _walk_category(page, category, walk)
                walk.screenshots.append(_screenshot(page, shots / f"{category.lower()}.png"))
        finally:
            browser.close()
    return walk


def _headline_overlap(page: Page) -> float:
    """Pixels by which the start page's first table (the headline results) reaches past the left
    edge of the workflow graph drawn beside the description."""
    page.locator("div#rulegraph canvas, div#rulegraph svg").first.wait_for()
    return page.evaluate(
        """() => document.querySelector('.document table').getBoundingClientRect().right
                 - document.querySelector('div#rulegraph').getBoundingClientRect().left"""
    )


def _walk_category(page: Page, category: str, walk: Walk) -> None:
    menu = page.locator("nav").first
    menu.locator("table").first.wait_for()
    toggles: dict[str, list[str]] = {}
    for radio in menu.locator("input[type=radio]").all():
        toggles.setdefault(radio.get_attribute("name"), []).append(radio.get_attribute("value"))
    if len(toggles) > 1:
        raise AssertionError(f"{category}: more than one label toggle ({sorted(toggles)}); extend the walk")
    headers = [h.strip().lower() for h in menu.locator("table thead th").all_inner_texts() if h.strip()]
    name, values = next(iter(toggles.items()), (None, [None]))
    shown = None
    for value in values:
        if name is not None:
            menu.locator(f'label[for="toggle-{name}-{value}"]').click()
        for row in menu.locator("table tbody tr").all():
            cells = [c.strip() for c in row.locator("td").all_inner_texts()]
            labels = dict(zip(headers, cells, strict=False))
            if name is not None:
                labels[name] = value
            row.locator("a[iconname=eye]").click()
            filename, kind, loaded, detail = _show(page, shown)
            shown = page.locator(ITEM).first.get_attribute("src")
            walk.items.append(Item(category, labels, filename, kind, loaded, detail))


def _screenshot(page: Page, path: Path) -> Path:
    page.evaluate("() => document.querySelectorAll('*').forEach(e => { e.scrollTop = 0; })")
    page.screenshot(path=str(path))
    return path
