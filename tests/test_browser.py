"""A person in headless Chromium picks "Other...", types a bad image, clicks Start, reads why.

A real JupyterHub with KubeSpawner and imagewarden's in-process hook; the refusal happens
before any pod exists, so the hub's kubeconfig may point nowhere (``spawner_kubeconfig_file``).
The page's own JavaScript (KubeSpawner's form) has to reveal the free-text box and name it for the
POST, so this also proves the field names the hook reads are the ones the browser sends.
The screenshot is kept as test-artifacts/browser-spawn-refused.png.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import yaml

from tests.support.browser import Page, launch_chromium
from tests.support.hub import ARTIFACTS_DIR, RunningHub, hub_settings_document, profile_list
from tests.support.registry import RunningRegistry
from tests.support.registry_fixtures import SeededImages

pytestmark = pytest.mark.browser

SELECT = "#profile-option-cpu--image"
OTHER_BOX = "#profile-option-cpu--image--unlisted-choice"
TYPED = "quay.io/pangeo/pangeo-notebook:2099.01.01"


async def is_visible(page: Page, selector: str) -> bool:
    visible: bool = await page.evaluate(
        f"document.querySelector({selector!r}).offsetParent !== null"
    )
    return visible


async def submit_and_wait(page: Page, selector: str) -> None:
    loaded = page.expect("Page.loadEventFired")
    await page.click(selector)
    await loaded


async def test_other_image_refusal_is_shown_on_the_spawn_page(
    tmp_path: Path,
    jupyterhub_process: Callable[..., Awaitable[RunningHub]],
    spawner_kubeconfig_file: Path,
    token_registry: RunningRegistry,
    open_registry: RunningRegistry,
    seeded_images: SeededImages,
) -> None:
    config_path = tmp_path / "imagewarden.yaml"
    config_path.write_text(
        yaml.safe_dump(hub_settings_document(token_registry.url, open_registry.url))
    )
    hub = await jupyterhub_process(
        f"""
c.KubeSpawner.profile_list = {profile_list()!r}
from imagewarden.hub import configure
configure(c, config_file={str(config_path)!r})
""",
        env={"KUBECONFIG": str(spawner_kubeconfig_file)},
    )
    async with launch_chromium(tmp_path) as page:
        await page.goto(f"{hub.url}/hub/login")
        await page.type_into("#username_input", "dora")
        await page.type_into("#password_input", "any password")
        await submit_and_wait(page, "#login_submit")
        if not (await page.url()).endswith("/hub/spawn"):
            await page.goto(f"{hub.url}/hub/spawn")

        assert not await is_visible(page, OTHER_BOX)
        # What choosing "Other..." in the drop-down does: the select's value changes and it
        # fires "change", on which KubeSpawner's script reveals and names the text box.
        await page.evaluate(
            f"""(() => {{
                const select = document.querySelector({SELECT!r});
                select.value = "unlisted-choice";
                select.dispatchEvent(new Event("change", {{bubbles: true}}));
            }})()"""
        )
        assert await is_visible(page, OTHER_BOX)
        await page.type_into(OTHER_BOX, TYPED)
        await submit_and_wait(page, "#spawn_form button[type=submit]")

        message = await page.evaluate("document.querySelector('.spawn-error-msg').innerText")
        still_form = await page.evaluate("document.querySelector('#spawn_form') !== null")
        await page.screenshot(ARTIFACTS_DIR / "browser-spawn-refused.png")

    assert message.startswith(f"Error: Cannot start a server with the image “{TYPED}”:")
    assert "2099.01.01" in message
    assert "2023.09.12" in message, "the closest existing tags are suggested"
    assert still_form, "the user can correct the image on the same page"
    assert (ARTIFACTS_DIR / "browser-spawn-refused.png").stat().st_size > 10_000
