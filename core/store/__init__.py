"""The workspace's DuckDB store: one file, typed queries grouped by pipeline stage."""

from core.store.base import STORE_FILE, StoreBase, text_key
from core.store.compare import CompareQueries
from core.store.evaluation import EvaluationQueries
from core.store.explore import ExploreFilters, ExploreQueries, ExploreResult
from core.store.instructions import BatchResult, InstructionQueries, InstructionRow
from core.store.judge_checks import JudgeCheckQueries
from core.store.mix import MixQueries
from core.store.profile import ProfileQueries
from core.store.screen_tables import ScreenTableQueries
from core.store.screening import ScreeningQueries


class Store(InstructionQueries, ScreeningQueries, ScreenTableQueries, ProfileQueries, ExploreQueries,
            EvaluationQueries, MixQueries, JudgeCheckQueries, CompareQueries, StoreBase):
    """The store of one workspace: every method opens the file, works in one transaction, closes it."""


__all__ = ["STORE_FILE", "BatchResult", "ExploreFilters", "ExploreResult", "InstructionRow", "Store", "text_key"]
