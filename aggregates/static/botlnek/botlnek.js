// Show timestamps in the viewer's local time; the title keeps UTC. A countdown
// (a deadline) reads "in 2h5m" or "3m ago" instead, and keeps counting.
function localTimes(root) {
  root.querySelectorAll("time[datetime]:not(.countdown)").forEach(function (el) {
    var when = new Date(el.getAttribute("datetime"));
    if (!isNaN(when)) { el.textContent = when.toLocaleString(); }
  });
  countdowns(root);
}
function span(seconds) {
  var units = [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]];
  for (var i = 0; i < units.length - 1; i++) {
    if (seconds >= units[i][1]) {
      var rest = Math.floor((seconds % units[i][1]) / units[i + 1][1]);
      return Math.floor(seconds / units[i][1]) + units[i][0] + (rest ? rest + units[i + 1][0] : "");
    }
  }
  return seconds + "s";
}
function countdowns(root) {
  root.querySelectorAll("time.countdown[datetime]").forEach(function (el) {
    var when = new Date(el.getAttribute("datetime"));
    if (isNaN(when)) { return; }
    var seconds = Math.round((when - Date.now()) / 1000);
    el.textContent = seconds >= 0 ? "in " + span(seconds) : span(-seconds) + " ago";
    el.classList.toggle("passed", seconds < 0);
  });
}
document.addEventListener("DOMContentLoaded", function () { localTimes(document); });
document.addEventListener("htmx:afterSwap", function (event) { localTimes(event.target); });
document.addEventListener("htmx:oobAfterSwap", function (event) { localTimes(event.target); });
setInterval(function () { countdowns(document); }, 1000);

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
