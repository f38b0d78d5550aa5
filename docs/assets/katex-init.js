// Render the math that pymdownx.arithmatex (generic mode) leaves in the page, with the
// KaTeX copy served by the site itself: no CDN.
function renderMath() {
  document.querySelectorAll(".arithmatex").forEach(function (el) {
    var tex = el.textContent.trim();
    var display = el.tagName === "DIV";
    tex = tex.replace(/^\\\[|\\\]$/g, "").replace(/^\\\(|\\\)$/g, "");
    katex.render(tex, el, { displayMode: display, throwOnError: false, strict: "ignore" });
  });
}
if (typeof document$ !== "undefined") {
  document$.subscribe(renderMath); // Material's instant navigation
} else {
  document.addEventListener("DOMContentLoaded", renderMath);
}
