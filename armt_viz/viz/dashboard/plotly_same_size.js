// armt_viz dashboard: skip Plotly.relayout calls that would give a figure the size it already has.
// Panel's Plotly pane calls Plotly.relayout(gd, {width, height}) after every layout pass of the page (each
// plot that finishes rendering starts one), and plotly redraws the whole figure on every call, even when the
// size is unchanged: 4-5 redraws of each figure per page load, 100-300 ms each for the run timeline. A call that
// changes the size, or anything else, goes through unchanged.
(function () {
  "use strict"
  var Plotly = window.Plotly
  if (!Plotly || Plotly.__armtSameSizeGuard) {
    return
  }
  var relayout = Plotly.relayout
  Plotly.relayout = function (gd, update) {
    if (arguments.length === 2 && update !== null && typeof update === "object" && gd && gd.layout &&
        gd._fullLayout) {
      var keys = Object.keys(update)
      var same = keys.length > 0 && keys.every(function (k) {
        return (k === "width" || k === "height") && gd.layout[k] === update[k] && gd._fullLayout[k] === update[k]
      })
      if (same) {
        return Promise.resolve(gd)
      }
    }
    return relayout.apply(this, arguments)
  }
  Plotly.__armtSameSizeGuard = true
})()
