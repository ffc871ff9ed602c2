// shop.js - the demo shop's own code: a catalogue, a cart in localStorage,
// the header, and the sillage calls a real shop would make.
var PRODUCTS = [
  { id: 'tee-ink', name: 'Ink T-shirt', price: 24, img: '👕', text: 'Organic cotton, printed with a wake.', category: 'Clothing' },
  { id: 'mug-wake', name: 'Wake mug', price: 14, img: '☕', text: 'Stoneware, 35 cl.', category: 'Kitchen' },
  { id: 'cap-sail', name: 'Sail cap', price: 19, img: '🧢', text: 'One size, adjustable.', category: 'Accessories' },
  { id: 'bag-tote', name: 'Tote bag', price: 12, img: '👜', text: 'Canvas, holds a week of groceries.', category: 'Accessories' }
];
function product(id) { return PRODUCTS.filter(function (p) { return p.id === id; })[0]; }
function cart() { try { return JSON.parse(localStorage.getItem('demo_cart')) || []; } catch (e) { return []; } }
function saveCart(c) { localStorage.setItem('demo_cart', JSON.stringify(c)); }
function user() { return localStorage.getItem('demo_user'); }
function money(n) { return '€' + n.toFixed(2); }
function cartProducts() {
  // localStorage is input like any other: unknown products dropped, quantities numbers
  return cart().filter(function (l) { return l && product(l.id); }).map(function (l) {
    var p = product(l.id);
    return { product_id: p.id, name: p.name, price: p.price, quantity: Math.max(1, parseInt(l.qty, 10) || 1), category: p.category };
  });
}
function addToCart(id) {
  var c = cart(), line = c.filter(function (l) { return l.id === id; })[0], p = product(id);
  if (line) line.qty++; else c.push({ id: id, qty: 1 });
  saveCart(c);
  sillage.track('Product Added', { product_id: p.id, name: p.name, price: p.price, quantity: 1, currency: 'EUR' });
  header();
}
function header() {
  var h = document.getElementById('header');
  if (!h) return;
  var n = cart().reduce(function (s, l) { return s + l.qty; }, 0), u = user();
  h.innerHTML = '<a class="brand" href="/demo/">sillage <small>demo shop</small></a><nav>' +
    '<a href="/demo/cart.html" id="cart-link">Cart (' + n + ')</a>' +
    (u ? '<a href="/demo/account.html" id="account-link">Account</a> <span id="who"></span> <a href="#" id="logout">Log out</a>'
       : '<a href="/demo/login.html" id="login-link">Log in</a>') +
    '<a href="/debug" target="_blank">Live events ↗</a></nav>';
  // the stored user is text, whatever it holds: never markup
  if (u) document.getElementById('who').textContent = u;
  var lo = document.getElementById('logout');
  if (lo) lo.onclick = function (e) { e.preventDefault(); localStorage.removeItem('demo_user'); sillage.track('Signed Out'); sillage.reset(); header(); };
}
document.addEventListener('DOMContentLoaded', header);
