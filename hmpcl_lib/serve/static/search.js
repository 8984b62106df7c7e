// Upload: post the chosen file's bytes to /search (the same code as /api/search) and show the returned results.
// Without a file the form is an ordinary GET of /search?drawing_id=... (a corpus drawing, found by its id).
(function () {
  const form = document.getElementById("search-form");
  const upload = document.getElementById("upload");
  const results = document.getElementById("results");
  const classFilter = document.getElementById("class-filter");
  let previewUrl = null;

  async function searchUpload(file) {
    const params = new URLSearchParams();
    const k = document.getElementById("k").value;
    if (k) params.set("k", k);
    if (classFilter.value) params.set("class", classFilter.value);
    results.setAttribute("aria-busy", "true");
    try {
      const response = await fetch("/search?" + params.toString(), {
        method: "POST", body: file, headers: {"Content-Type": file.type || "application/octet-stream"},
      });
      results.innerHTML = await response.text();
    } catch (err) {
      results.innerHTML = "";
      const p = document.createElement("p");
      p.className = "error"; p.id = "error"; p.setAttribute("role", "alert");
      p.textContent = "The search failed: " + err;
      results.appendChild(p);
    } finally {
      results.removeAttribute("aria-busy");
    }
    const preview = document.getElementById("query-preview");
    if (preview) {
      if (previewUrl) URL.revokeObjectURL(previewUrl);
      previewUrl = URL.createObjectURL(file);
      preview.src = previewUrl;
    }
  }

  form.addEventListener("submit", function (event) {
    const file = upload.files && upload.files[0];
    if (file) { event.preventDefault(); searchUpload(file); }
  });
  upload.addEventListener("change", function () {
    if (upload.files && upload.files[0]) {
      document.getElementById("drawing-id").value = "";
      searchUpload(upload.files[0]);
    }
  });
  classFilter.addEventListener("change", function () {
    const file = upload.files && upload.files[0];
    if (file) searchUpload(file);
    else if (document.getElementById("drawing-id").value) form.requestSubmit();
  });
})();
