"""Hardware-aware search over any registered search space: the objective and its hard limits,
the table of candidates, and the searchers (rerank, random, evolution, prune, grad_prune)."""
from engine.search.objective import (COST_NAMES, OBJECTIVES, Constraints, InfeasibleError,
                                     Weights, parse_weights)
from engine.search.problem import (Problem, SpaceTable, build_table, group_positions,
                                   grouped_costs, make_scorer, space_costs)
from engine.search.searchers import (NEEDS_RELAXATION, PROGRESS_TOTAL, SEARCHERS, Options,
                                     Result, SearchError, UninformativeScores, best_position,
                                     check, get, rerank_pool, search, size_order)

__all__ = ['COST_NAMES', 'OBJECTIVES', 'Constraints', 'InfeasibleError', 'Weights',
           'parse_weights', 'Problem', 'SpaceTable', 'build_table', 'group_positions',
           'grouped_costs', 'make_scorer', 'space_costs',
           'NEEDS_RELAXATION', 'PROGRESS_TOTAL', 'SEARCHERS', 'Options', 'Result', 'SearchError',
           'UninformativeScores',
           'best_position', 'check', 'get', 'rerank_pool', 'search', 'size_order']
