"""Writes batch request files: the purchases of the price model's feature frame (argv[2], made by
`mercator features materialize`) in turn, with the ids the server gave the fixture (argv[1], from
fixture.py): material, quantity, supplier, delivery after its lead time, the day asked on. One file
`batch-{rows}.csv` in argv[3] per row count that follows."""
import csv, datetime, json, math, sys

ids = json.load(open(sys.argv[1]))
frame = list(csv.DictReader(open(sys.argv[2])))
requests = []
for r in frame:
    day = datetime.date.fromisoformat(r["observed_on"])
    delivery = day + datetime.timedelta(days=int(float(r["lead_days"])))
    requests.append(f'{ids["materials"][r["material_code"]]},{round(math.exp(float(r["log_quantity"])))},'
                    f'{ids["suppliers"][r["supplier_code"]]},{delivery},{day}\n')
for rows in map(int, sys.argv[4:]):
    with open(f"{sys.argv[3]}/batch-{rows}.csv", "w") as f:
        f.write("material_id,quantity,supplier_id,delivery_date,as_of\n")
        for i in range(rows):
            f.write(requests[i % len(requests)])
