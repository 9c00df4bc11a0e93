"""index.html in a real headless browser: it loads without errors and shows
its tables and figures at a nonzero size.

A copy of the page gets a probe script that, once the page has loaded, writes
what the browser rendered into the DOM, which ``chromium --dump-dom`` prints.
"""

import json
import re
import shutil
import subprocess

import pytest

CHROMIUM = shutil.which("chromium")

PROBE_HEAD = """<script>
window.pageErrors = [];
window.addEventListener("error",
  e => pageErrors.push(String(e.message || (e.target && e.target.src || "").slice(0, 60))), true);
</script>"""
PROBE_BODY = """<script>
window.addEventListener("load", () => {
  const box = el => el.getBoundingClientRect();
  const probe = {
    errors: pageErrors,
    tables: [...document.querySelectorAll("table")].map(t => ({rows: t.rows.length, width: box(t).width})),
    images: [...document.querySelectorAll("img")].map(i => ({loaded: i.complete && i.naturalWidth > 0,
                                                          width: box(i).width, height: box(i).height})),
  };
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(probe);
  document.body.appendChild(pre);
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (Debian: apt-get install -y chromium)")
def test_index_html_renders_tables_and_figures(rich_reports, tmp_path):
    page = (rich_reports / "index.html").read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + PROBE_HEAD, 1)
                      .replace("</body>", PROBE_BODY + "</body>", 1))

    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=10000", "--window-size=1200,900", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120, check=True).stdout
    probe = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"'))

    assert probe["errors"] == []
    assert len(probe["tables"]) == 2 and all(t["rows"] > 1 and t["width"] > 0 for t in probe["tables"])
    assert len(probe["images"]) == page.count("<img") == 8
    assert all(i["loaded"] and i["width"] > 100 and i["height"] > 100 for i in probe["images"])
