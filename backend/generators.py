"""Which generator answers a project's prompts: the project's current generator version (a folder written by
a tuning round, `MODEL_DIR/<project>/generator/v<N>`), or the configured GENERATOR_MODEL when the project
has none. Every project without a version shares the one configured generator the worker loaded; a version
is loaded once per (project, version) and dropped when the project's pointer moves on, so a rollback or a
promotion is served from the next generation job, without a restart. With GENERATOR=openai the configured
server answers every project (versions are local folders: serve one with vLLM and point OPENAI_BASE_URL at it).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from typing import Callable

from backend.config import Settings, generation_config
from model.store import GENERATOR, VersionStore

log = logging.getLogger(__name__)

MAX_LOADED_VERSIONS = 2  # tuned versions kept loaded at once (one per project; the least recently used goes)


class ProjectGenerators:
    def __init__(self, settings: Settings, configured: Callable[[], object]):
        self.settings = settings
        self.store = VersionStore(settings.model_dir, GENERATOR)
        self._configured = configured  # the worker's shared generator, loaded on first use
        self._loaded: OrderedDict[tuple[int, str], object] = OrderedDict()

    def version(self, project: int) -> str | None:
        """The project's current generator version, None when the configured generator serves it."""
        if self.settings.generator != "local":
            return None
        return self.store.current(project)

    def for_project(self, project: int):
        """(generator, version): what answers the project's prompts now, and its version name (None: the
        configured GENERATOR_MODEL)."""
        version = self.version(project)
        if version is None:
            return self._configured(), None
        key = (project, version)
        generator = self._loaded.pop(key, None)
        if generator is None:
            for old in [k for k in self._loaded if k[0] == project]:  # the version it replaces
                del self._loaded[old]
            while len(self._loaded) >= MAX_LOADED_VERSIONS:
                self._loaded.popitem(last=False)
            from model.generation import load_generator

            path = self.store.path(project, version)
            log.info("project %s: answering with generator version %s (%s)", project, version, path)
            generator = load_generator(dataclasses.replace(generation_config(self.settings), model=str(path)))
        self._loaded[key] = generator
        return generator, version


def describe(generator, version: str | None) -> dict:
    """The generator record a task keeps (rlhf_generation.generator): the generator's own description plus
    which version of the project's generator wrote the answers (null: the configured GENERATOR_MODEL)."""
    return {**generator.describe(), "version": version}
