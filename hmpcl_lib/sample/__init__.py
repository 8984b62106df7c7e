"""Generated sample corpus in DeepPatent2's exact layout: the embedded default the whole pipeline runs on.

Nothing real is reachable offline, so the project draws its own design patents: each patent is a small 3-D
object built from lathe (surface of revolution), box and tube primitives and rendered as hidden-line art
from several projections. The hierarchy is visible in the drawings, so hierarchy-aware training has
something real to find:

* main class   -> shape family (09 bottle, 06 furniture, 26 lamp, 07 cup, 14 device, 10 clock, 08 tool, 11 vase),
* subclass     -> structural variant of that family (real Locarno subclass codes, e.g. 07-01 mug, 07-02 pot),
* patent       -> its own proportions, curvature and surface ornament (bands, flutes, zigzag, panels, ...),
* drawing/view -> projection (perspective, front, side, top, rear, bottom, ...) plus small jitter.

Output, byte for byte in the real layout (see docs/ARCHITECTURE.md): per year the parts `raw/YYYY/YYYY.aa`,
`.ab`, ... of one tar.gz holding a year-dependent top folder with `design{YYYY}.json` and two inner
tar.gz archives of PNG (Original / Segmented, names and folders vary by year); weekly USPTO grant files
`uspto/ipgYYMMDD.xml` carrying `classification-locarno`; a Dataverse-shaped listing of the parts.
Same spec -> identical bytes (fixed tar mtimes/owners, gzip mtime 0, sorted members, seeded RNGs).

Modules: `spec` (SampleSpec, ground truth, injected faults, one drawing), `render` (3-D primitives and the
hidden-line renderer), `shapes` (shape families), `writers` (DeepPatent2 archive, listing, USPTO XML).
The public names are re-exported here.
"""

from hmpcl_lib.sample.render import render_object
from hmpcl_lib.sample.shapes import FAMILIES, Family, Style, object_title
from hmpcl_lib.sample.spec import (FAULT_KINDS, FAULT_RATE, GRANT_WEEKS_PER_YEAR, VIEWS, SampleSpec, contact_sheet,
                                   render_drawing, sample_patents)
from hmpcl_lib.sample.writers import (generate_sample, locarno_edition, sample_listing, write_sample_uspto,
                                      write_sample_year, year_layout)

__all__ = ["FAMILIES", "FAULT_KINDS", "FAULT_RATE", "GRANT_WEEKS_PER_YEAR", "VIEWS", "Family", "SampleSpec", "Style",
           "contact_sheet", "generate_sample", "locarno_edition", "object_title", "render_drawing", "render_object",
           "sample_listing", "sample_patents", "write_sample_uspto", "write_sample_year", "year_layout"]
