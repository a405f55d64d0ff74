// Writes plots_template.html: the page `dvc plots show` fills (.dvc/config: plots.html_template), with vega,
// vega-lite and vega-embed inlined from node_modules, so the charts draw with no internet. It has no {scripts}
// placeholder: dvc-render would put its CDN <script> tags there. Run by `npm ci --prefix web` (postinstall).
import { readFileSync, writeFileSync } from 'node:fs';

const here = (path) => new URL(path, import.meta.url);
const scripts = ['vega', 'vega-lite', 'vega-embed'].map((name) => {
  const { version } = JSON.parse(readFileSync(here(`node_modules/${name}/package.json`), 'utf8'));
  // "</script" inside a library would end the inline element early
  const code = readFileSync(here(`node_modules/${name}/build/${name}.min.js`), 'utf8').replaceAll('</script', '<\\/script');
  return `<!-- ${name} ${version} -->\n<script>${code}</script>`;
});
const page = `<!DOCTYPE html>
<html>
<head>
  {refresh_tag}
  <meta charset="utf-8">
  <title>DVC plots</title>
  <link rel="icon" href="data:,">
  ${scripts.join('\n  ')}
  <style>body { font-family: system-ui, sans-serif; } table { border-spacing: 15px; }</style>
</head>
<body>
  {plot_divs}
</body>
</html>
`;
writeFileSync(here('plots_template.html'), page);
