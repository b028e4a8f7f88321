// Bundles the demo room (its code, chorus-kit and realtime-js) into dist/,
// which the node serves at /demo/ (node.demo_dir): no CDN, no other server.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync } from 'node:fs';

mkdirSync('dist', { recursive: true });
await build({
  entryPoints: ['src/demo.ts'],
  bundle: true,
  format: 'esm',
  target: 'es2020',
  minify: true,
  sourcemap: true,
  outfile: 'dist/demo.js',
  logLevel: 'warning',
});
copyFileSync('index.html', 'dist/index.html');
copyFileSync('demo.css', 'dist/demo.css');
