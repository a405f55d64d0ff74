// node web/browser_check.mjs URL SCREENSHOT [explorer|plots] [PICTURE [NOT_AN_IMAGE]]: open URL in headless Chromium (Debian's, or
// $CHROMIUM) and print one JSON line: console errors, failed requests and, for the explorer, its check against
// Python (window.explorer), how many pixels its sample grid drew, every model's first grid and, given PICTURE, the grey levels of that
// picture as the page prepared it for the encoder, whether it interpolated it with a shipped image (or the note it
// showed instead), and given NOT_AN_IMAGE the note the page showed for that file; for a dvc plots page, how many vega
// charts drew and how many of them hold ink.
import { chromium } from 'playwright-core';

const [url, screenshot, mode = 'explorer', picture, notAnImage] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const errors = [];
const offline = [];
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  page.on('console', (msg) => { if (msg.type() === 'error') errors.push(msg.text()); });
  page.on('pageerror', (err) => errors.push(String(err)));
  page.on('requestfailed', (req) => errors.push(`request failed: ${req.url()}`));
  page.on('request', (req) => { if (!req.url().startsWith(new URL(url).origin) && !req.url().startsWith('data:')) offline.push(req.url()); });
  await page.goto(url, { waitUntil: 'load' });
  let result;
  if (mode === 'plots') {
    await page.waitForFunction(() => document.querySelectorAll('.vega-embed').length > 0, null, { timeout: 60000 });
    await page.waitForTimeout(1000);
    result = await page.evaluate(() => ({
      embeds: document.querySelectorAll('.vega-embed').length,
      drawn: [...document.querySelectorAll('.vega-embed')].filter((e) => e.querySelector('svg, canvas')).length,
      // charts with ink: canvases holding more than axes' worth of non-white, opaque pixels
      inked: [...document.querySelectorAll('.vega-embed canvas')].filter((c) => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let ink = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && d[i] + d[i + 1] + d[i + 2] < 600) ink++;
        return ink > 500;
      }).length,
    }));
  } else {
    await page.waitForFunction(() => window.explorer && window.explorer.done, null, { timeout: 120000 });
    result = await page.evaluate(() => {
      const grid = document.querySelector('canvas[data-role=grid]');
      const data = grid ? grid.getContext('2d').getImageData(0, 0, grid.width, grid.height).data : [];
      let lit = 0;
      for (let i = 0; i < data.length; i += 4) if (data[i] + data[i + 1] + data[i + 2] > 0) lit++;
      const sweep = document.querySelector('canvas[data-role=code-sweep]');
      // every model's sample grid as the page first drew it (seed 0, temperature 1): the red channel's levels
      const grids = [...document.querySelectorAll('canvas[data-role=grid]')].map((g) => {
        const d = g.getContext('2d').getImageData(0, 0, g.width, g.height).data;
        return Array.from({ length: d.length / 4 }, (_, i) => d[4 * i]);
      });
      return { ...window.explorer, grid: grid ? [grid.width, grid.height] : null, litPixels: lit, grids,
        checkLine: document.getElementById('check').textContent,
        codeSweep: sweep ? [sweep.width, sweep.height] : null,
        sections: [...document.querySelectorAll('section.model')].map((s) => s.id) };
    });
    const thumbs = await page.$$('canvas.thumb');
    if (thumbs.length >= 2) {
      await thumbs[0].click();
      await thumbs[1].click();
      await page.waitForFunction(() => document.querySelector('canvas[data-role=interpolation]').width > 0, null, { timeout: 30000 });
      result.interpolation = await page.evaluate(() => document.querySelector('canvas[data-role=interpolation]').width);
    }
    const fileInput = await page.$('input[type=file]');
    if (picture && fileInput) {
      await fileInput.setInputFiles(picture);
      await page.waitForFunction((n) => document.querySelectorAll('canvas.thumb').length > n, thumbs.length, { timeout: 30000 });
      result.dropped = await page.evaluate(() => {
        const thumb = [...document.querySelectorAll('canvas.thumb')].pop();
        const d = thumb.getContext('2d').getImageData(0, 0, thumb.width, thumb.height).data;
        return Array.from({ length: d.length / 4 }, (_, i) => d[4 * i]);
      });
      const noteOf = () => document.querySelector('[data-role=interpolation-note]').textContent;
      const all = await page.$$('canvas.thumb');
      if (thumbs.length >= 2) { // a shipped image and the dropped one: interpolated, or a note asking its class
        const count = () => page.evaluate(() => window.explorer.interpolations);
        let before = await count();
        await all[0].click(); // with the second shipped image, picked before: an interpolation
        await page.waitForFunction((n) => window.explorer.interpolations > n, before, { timeout: 30000 });
        before = await count();
        await all[all.length - 1].click(); // the first shipped image with the dropped one
        await page.waitForFunction((n) => window.explorer.interpolations > n ||
          document.querySelector('[data-role=interpolation-note]').textContent !== '', before, { timeout: 30000 });
        result.droppedInterpolated = (await count()) > before;
        result.note = await page.evaluate(noteOf);
      }
      if (notAnImage) {
        await fileInput.setInputFiles(notAnImage);
        await page.waitForFunction(() => document.querySelector('[data-role=interpolation-note]').textContent
          .includes('not an image'), null, { timeout: 30000 });
        result.notAnImageNote = await page.evaluate(noteOf);
      }
    }
    result.resampledSeeds = await page.evaluate(() => {
      const controls = document.querySelector('section.model .controls');
      const seed = controls.querySelector('input');
      const before = seed.value;
      [...controls.querySelectorAll('button')].find((b) => b.textContent === 'Resample').click();
      return [before, seed.value];
    });
  }
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ ...result, consoleErrors: errors, outsideRequests: offline }));
} finally {
  await browser.close();
}
