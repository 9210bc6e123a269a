"""Sends argv[3] POSTs of the JSON body in argv[2] to the URL argv[1], one after another on one keep-alive
connection (API_KEY from the environment); fails on any answer but 200."""
import http.client, os, sys, urllib.parse

url, body, n = urllib.parse.urlparse(sys.argv[1]), open(sys.argv[2], "rb").read(), int(sys.argv[3])
conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
headers = {"content-type": "application/json", "authorization": f"Bearer {os.environ['API_KEY']}"}
for _ in range(n):
    conn.request("POST", url.path, body, headers)
    r = conn.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"{url.path}: {r.status}")
