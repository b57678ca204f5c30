"""The Slack sandbox's page in headless Chromium (Selenium): switch user, click, type, read — as a person does.

Chromium and its driver come from Debian (`apt-get install chromium chromium-driver`); the driver's
path is passed explicitly, as Selenium Manager cannot download one here. Every wait is for a
condition on the page, never a fixed sleep.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM = os.environ.get("JIT_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("JIT_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
#: The page re-renders as news arrives: an element found a moment ago may be gone.
_FLEETING = (StaleElementReferenceException, NoSuchElementException, ElementClickInterceptedException)


def have_chromium() -> bool:
    return os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)


def chromium(width: int = 1280, height: int = 900) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # Chromium's own sandbox needs user namespaces the test machine may not give
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


class SandboxPage:
    """The sandbox page as one person at a time sees it."""

    def __init__(self, driver: webdriver.Chrome, url: str, timeout: float = 30) -> None:
        self.driver = driver
        self.url = url
        self.timeout = timeout

    def until(self, condition: Callable[[], Any], what: str, timeout: float | None = None) -> Any:
        def check(_driver: Any) -> Any:
            try:
                return condition()
            except _FLEETING:
                return False

        return WebDriverWait(self.driver, timeout or self.timeout, poll_frequency=0.1).until(
            check, message=f"waiting for {what}; notes on the page: {self.notes()}"
        )

    # ------------------------------------------------------------------ who and where

    def open(self) -> SandboxPage:
        self.driver.get(self.url)
        self.until(lambda: self.driver.find_element(By.ID, "me").get_attribute("value"), "the page to load")
        return self

    def be(self, user_id: str) -> None:
        """Switch user, and wait until the page shows what this person sees."""
        Select(self.driver.find_element(By.ID, "me")).select_by_value(user_id)
        self.until(lambda: self.driver.find_element(By.TAG_NAME, "body").get_attribute("data-me") == user_id, user_id)

    def go(self, place: str) -> None:
        """A channel by id, or "home"."""
        self.until(lambda: self._click(self.driver.find_element(By.CSS_SELECTOR, f'[data-place="{place}"]')), place)

    # ------------------------------------------------------------------ reading

    def message(self, text: str) -> WebElement:
        """The (top-level) message showing `text`, e.g. a request id."""
        return self.driver.find_element(
            By.XPATH,
            f"//article[contains(@class,'message') and not(contains(@class,'ephemeral'))][contains(., '{text}')]",
        )

    def wait_message(self, text: str, containing: str = "") -> WebElement:
        return self.until(
            lambda: containing in self.message(text).text and self.message(text),
            f"a message with {text!r} showing {containing!r}",
        )

    def ephemerals(self) -> list[str]:
        return [e.text for e in self.driver.find_elements(By.CSS_SELECTOR, "article.ephemeral")]

    def wait_ephemeral(self, containing: str, after: int = 0) -> str:
        """A message only I can see saying `containing`, among those after the first `after`."""
        return self.until(
            lambda: next((t for t in self.ephemerals()[after:] if containing in t), None),
            f"a message only I can see, saying {containing!r}",
        )

    def click_and_hear(self, text: str, label: str, containing: str) -> str:
        """Click, and wait for jit's answer to me alone (a refusal, a thank-you)."""
        before = len(self.ephemerals())
        self.click(text, label)
        return self.wait_ephemeral(containing, after=before)

    def notes(self) -> list[str]:
        try:
            return [n.text for n in self.driver.find_elements(By.CSS_SELECTOR, "#notes .note")]
        except _FLEETING:
            return []

    # ------------------------------------------------------------------ doing

    def click(self, text: str, label: str, confirm: bool = True) -> None:
        """Click the button `label` on the message showing `text` (confirming a confirmation)."""
        xpath = f".//button[contains(@class,'bk-button') and normalize-space(.)='{label}']"
        self.until(lambda: self._click(self.message(text).find_element(By.XPATH, xpath)), f"{label} on {text}")
        if confirm and self.driver.find_elements(By.CSS_SELECTOR, "dialog#confirm[open]"):
            self.until(
                lambda: self._click(self.driver.find_element(By.CSS_SELECTOR, "dialog#confirm[open] .danger")),
                "the confirmation",
            )

    def modal(self) -> WebElement:
        return self.until(lambda: self.driver.find_element(By.CSS_SELECTOR, "dialog#modal[open]"), "the modal")

    def type_in_modal(self, text: str) -> None:
        field = self.until(
            lambda: self.driver.find_element(By.CSS_SELECTOR, "dialog#modal[open] .bk-input"), "the modal's field"
        )
        field.clear()
        field.send_keys(text)

    def submit_modal(self) -> None:
        self.until(lambda: self._click(self.driver.find_element(By.ID, "modal-submit")), "the modal's submit button")

    def wait_modal_closed(self) -> None:
        self.until(lambda: not self.driver.find_elements(By.CSS_SELECTOR, "dialog#modal[open]"), "the modal to close")

    def command(self, text: str) -> None:
        field = self.driver.find_element(By.ID, "command")
        field.clear()
        field.send_keys(text)
        self.driver.find_element(By.CSS_SELECTOR, "#composer button").click()

    @staticmethod
    def _click(element: WebElement) -> bool:
        if not element.is_enabled():
            return False
        element.click()
        return True

    def screenshot(self, element: WebElement, path: str) -> None:
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        ActionChains(self.driver).move_to_element(self.driver.find_element(By.CSS_SELECTOR, ".top")).perform()
        element.screenshot(path)
