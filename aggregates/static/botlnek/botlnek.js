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

// While the live socket is down, say so; and come back whatever the close code
// (htmx's ws extension reconnects by itself only after 1006, 1011, 1012, 1013).
// <body data-live> tells whether the page is connected: "open" or "down".
document.addEventListener("htmx:wsOpen", function () {
  document.body.dataset.live = "open";
  var banner = document.getElementById("connection");
  if (banner) { banner.classList.remove("down"); }
});
document.addEventListener("htmx:wsClose", function (event) {
  document.body.dataset.live = "down";
  var banner = document.getElementById("connection");
  if (banner) { banner.classList.add("down"); }
  var code = event.detail.event.code;
  if ([1006, 1011, 1012, 1013].indexOf(code) < 0) {
    setTimeout(function () { event.detail.socketWrapper.reconnect(); }, 1000);
  }
});
