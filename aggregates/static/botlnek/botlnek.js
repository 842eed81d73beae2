// Show timestamps in the viewer's local time; the title keeps UTC.
function localTimes(root) {
  root.querySelectorAll("time[datetime]").forEach(function (el) {
    var when = new Date(el.getAttribute("datetime"));
    if (!isNaN(when)) { el.textContent = when.toLocaleString(); }
  });
}
document.addEventListener("DOMContentLoaded", function () { localTimes(document); });
document.addEventListener("htmx:afterSwap", function (event) { localTimes(event.target); });
document.addEventListener("htmx:oobAfterSwap", function (event) { localTimes(event.target); });
