"""Verdicts on the paper's claims from the study's tables, and the report (REPORT.md with REPORT_APPENDIX.md).

Every verdict comes from ``analysis`` (rules written down before the numbers); this package only gathers the rows
the tables already hold and lays them out:

- ``verdicts``: the verdicts table, a notebook's closing findings, the summary, the claims table
- ``formatting``: number formats by column, Markdown tables, anchors that work on a forge and in JupyterLab
- ``notes``: per-model notes (attention window, depth, precision and machine checks, samples, dtypes), the headline
- ``provenance``: which run computed each model's rows
- ``document``: REPORT.md and its appendix
"""

from .document import APPENDIX_FILE, SECTIONS, appendix_text, report_text, write_report
from .formatting import anchor, anchor_tag, markdown_table
from .notes import attention_note, depth_note, dtype_notes, headline, machine_note, precision_note, sample_notes
from .provenance import (executed_folder, later_provenance, provenance_lines, record_provenance, reproduce_command,
                         run_stamp)
from .verdicts import answer, at_a_glance, claims_table, findings, summary, verdict_mark, verdicts

__all__ = ["APPENDIX_FILE", "SECTIONS", "anchor", "anchor_tag", "answer", "appendix_text", "at_a_glance",
           "attention_note", "claims_table", "depth_note", "dtype_notes", "executed_folder", "findings", "headline",
           "later_provenance", "machine_note", "markdown_table", "precision_note", "provenance_lines",
           "record_provenance", "report_text", "reproduce_command", "run_stamp", "sample_notes", "summary",
           "verdict_mark", "verdicts", "write_report"]
