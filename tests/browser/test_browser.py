"""The admin in a real browser, against the running system: a business user's order moves stock,
an auditor reads the event log and cannot change it, an operator replays a dead delivery.

Each test screenshots its steps to test-artifacts/browser/<test>/ (see conftest.py).
"""

import re
from collections.abc import Sequence

import pytest
from django.contrib.auth.models import Group, Permission, User
from playwright.sync_api import Page, expect

from consumers.models import StockMovement
from core import services
from core.models import Customer, Order, Product
from core.roles import AUDITORS, OPERATORS
from outbox.models import Delivery, Event, Replay
from outbox.relay import routing
from tests.browser.conftest import Screenshots, System, reload_until
from tooling.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery staple"
PIPELINE_TIMEOUT = 60.0  # seconds for the relay and the worker to apply what a test waits for


def user_with(username: str, *, permissions: Sequence[str] = (), group: str = "") -> User:
    """A staff user with the given `app.codename` permissions, or in the given group."""
    user = User.objects.create_user(username, f"{username}@example.com", PASSWORD, is_staff=True)
    for code in permissions:
        app_label, codename = code.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    if group:
        user.groups.add(Group.objects.get(name=group))
    return user


def log_in(page: Page, shot: Screenshots, user: User) -> None:
    """Log in through the admin's login form and land on the admin index."""
    page.goto("/admin/")
    expect(page).to_have_url(re.compile(r"/admin/login/"))
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    shot(page, f"login {user.username}")
    page.click("input[type=submit]")
    expect(page.locator("#user-tools")).to_contain_text(user.username)
    expect(page.locator("h1")).to_have_text("Site administration")


def autocomplete(page: Page, field_id: str, search: str, choice: str) -> None:
    """Pick `choice` in the admin's autocomplete (select2) widget of `field_id`, typing `search`."""
    page.click(f"#{field_id} + .select2 .select2-selection")
    page.fill(".select2-container--open .select2-search__field", search)
    page.locator(".select2-container--open .select2-results__option", has_text=choice).click()
    expect(page.locator(f"#select2-{field_id}-container")).to_have_text(re.compile(re.escape(choice)))


def open_deliveries(page: Page) -> None:
    """Go to the deliveries list from the admin index."""
    page.locator("#site-name a").click()
    # By address, as an operator would bookmark it.
    page.locator("#content-main a[href='/admin/outbox/delivery/']").first.click()
    expect(page.locator("h1")).to_have_text("Select delivery to view")


def stock_column(page: Page, products: list[Product]) -> list[str]:
    """The stock the product list shows for each product."""
    rows = page.locator("#result_list tbody tr")
    return [rows.filter(has_text=p.sku).locator("td.field-stock").inner_text().strip() for p in products]


def all_done() -> bool:
    """Every routed delivery of every event is done."""
    routed = sum(len(routing.consumers_for(t)) for t in Event.objects.values_list("event_type", flat=True))
    return (
        Delivery.objects.filter(status="done").count() == routed
        and not Delivery.objects.exclude(status="done").exists()
    )


def audit_lines_for(event_id: int, log: str) -> int:
    return len(re.findall(rf' INFO audit \{{.*?"id": {event_id},', log))


def test_business_user_places_an_order_with_three_lines_and_sees_the_stock_drop(
    system: System, page: Page, shot: Screenshots, customer: Customer, products: list[Product]
) -> None:
    """Log in, add a placed order with three lines in one submit (customer and products picked in
    the autocomplete widgets), see it saved, then watch the product list until the consumers have
    taken the ordered quantities out of stock."""
    for product in products:
        services.stock_receive(sku=product.sku, quantity=10, note="opening")
    user = user_with(
        "bea",
        permissions=[
            "core.view_order",
            "core.add_order",
            "core.view_orderline",
            "core.add_orderline",
            "core.view_customer",
            "core.view_product",
        ],
    )
    log_in(page, shot, user)

    page.get_by_role("link", name="Products").click()
    reload_until(
        page, lambda: stock_column(page, products) == ["10", "10", "10"], timeout=PIPELINE_TIMEOUT, what="opening stock"
    )
    shot(page, "products before the order")

    page.get_by_role("link", name="Orders").click()
    page.get_by_role("link", name="Add order").click()
    expect(page.locator("h1")).to_have_text("Add order")
    autocomplete(page, "id_customer", "Ada", "Ada Lovelace")
    page.select_option("#id_status", "placed")
    for i, product in enumerate(products):
        autocomplete(page, f"id_lines-{i}-product", product.sku, f"{product.sku} {product.name}")
        page.fill(f"#id_lines-{i}-quantity", str(i + 1))
    shot(page, "order form filled")
    page.click("input[name=_save]")

    expect(page.locator("ul.messagelist li.success")).to_contain_text("was added successfully")
    order = Order.objects.get()
    expect(page.locator("#result_list")).to_contain_text(str(order))
    shot(page, "order saved")
    assert order.status == Order.Status.PLACED
    assert order.customer == customer
    assert [(line.product_id, line.quantity) for line in order.lines.order_by("id")] == [
        (p.pk, i + 1) for i, p in enumerate(products)
    ]

    page.get_by_role("link", name="Products").click()
    reload_until(
        page,
        lambda: stock_column(page, products) == ["9", "8", "7"],
        timeout=PIPELINE_TIMEOUT,
        what="the product list to show the stock taken by the order",
    )
    shot(page, "products after the order")
    assert [Product.objects.get(pk=p.pk).stock for p in products] == [9, 8, 7]
    moves = StockMovement.objects.filter(source=f"order:{order.pk}")
    assert sorted((m.product_id, m.quantity) for m in moves) == [(p.pk, -(i + 1)) for i, p in enumerate(products)]
    wait_until(lambda: system.mail.count() == 1, timeout=PIPELINE_TIMEOUT, what="the order confirmation e-mail")
    assert system.mail.messages[0]["To"] == customer.email


def test_auditor_reads_an_orders_events_and_timeline_and_cannot_change_them(
    system: System, page: Page, shot: Screenshots, customer: Customer, products: list[Product]
) -> None:
    """An auditor finds an order's events by searching the event log, reads the order's timeline
    in version order, sees no way to change an event, and a direct POST to change or delete one
    is refused with 403 while the same CSRF token is accepted for a permitted POST."""
    order = services.order_create(
        customer=customer, lines=[services.LineRequest(p.sku, 2) for p in products[:2]], place=True
    )
    services.order_set_status(order=order, status=Order.Status.CANCELLED)
    aggregate = f"order:{order.pk}"
    order_events = list(
        Event.objects.filter(aggregate_type="order", aggregate_id=str(order.pk)).order_by("aggregate_version")
    )
    assert len(order_events) >= 4, "created and placed, two lines, cancelled"
    before = {e.pk: (e.event_type, e.payload, e.aggregate_version) for e in Event.objects.all()}
    user = user_with("audrey", group=AUDITORS)
    log_in(page, shot, user)

    page.get_by_role("link", name="Events").click()
    expect(page.locator("a.addlink")).to_have_count(0)
    page.fill("#searchbar", aggregate)
    page.press("#searchbar", "Enter")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(len(order_events))
    shot(page, "event log searched by aggregate")
    ids, types = rows.locator("th.field-id").all_inner_texts(), rows.locator("td.field-event_type").all_inner_texts()
    shown = zip(ids, types, strict=True)
    assert {int(pk): event_type for pk, event_type in shown} == {e.pk: e.event_type for e in order_events}

    # The type filter narrows the search to the cancellation.
    page.locator("#changelist-filter").get_by_role("link", name="order.cancelled", exact=True).click()
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text(aggregate)
    shot(page, "event log filtered by type")

    rows.get_by_role("link", name=aggregate).click()
    expect(page.locator("h1")).to_have_text(f"Timeline of {aggregate}")
    versions = page.locator("tr.outbox-version")
    expect(versions).to_have_count(len(order_events))
    assert [int(v) for v in versions.locator("td:nth-child(1)").all_inner_texts()] == [
        e.aggregate_version for e in order_events
    ]
    assert versions.locator("td:nth-child(3)").all_inner_texts() == [e.event_type for e in order_events]
    shot(page, "timeline")

    target = order_events[0]
    versions.first.get_by_role("link", name=str(target.pk), exact=True).click()
    expect(page.locator("h1")).to_have_text("View event")
    expect(page.locator(".field-event_type")).to_contain_text(target.event_type)
    expect(page.locator("input[type=submit]")).to_have_count(0)
    expect(page.locator("a.deletelink")).to_have_count(0)
    shot(page, "event read only")

    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    change_url = f"/admin/outbox/event/{target.pk}/change/"
    refused_change = page.request.post(
        change_url,
        form={"csrfmiddlewaretoken": token, "event_type": "order.tampered", "_save": "Save"},
        headers={"Referer": system.base_url + change_url},
        max_redirects=0,
    )
    delete_url = f"/admin/outbox/event/{target.pk}/delete/"
    refused_delete = page.request.post(
        delete_url,
        form={"csrfmiddlewaretoken": token, "post": "yes"},
        headers={"Referer": system.base_url + delete_url},
        max_redirects=0,
    )
    # The same token is good: a POST the auditor may make (the CSV export action) is answered.
    allowed = page.request.post(
        "/admin/outbox/event/",
        form={"csrfmiddlewaretoken": token, "action": "export_events_csv", "_selected_action": str(target.pk)},
        headers={"Referer": system.base_url + "/admin/outbox/event/"},
        max_redirects=0,
    )
    assert refused_change.status == 403, refused_change.text()[:500]
    assert "CSRF" not in refused_change.text()
    assert refused_delete.status == 403, refused_delete.text()[:500]
    assert "CSRF" not in refused_delete.text()
    assert allowed.status == 200, allowed.text()[:500]
    assert allowed.text().splitlines()[1].startswith(f"{target.pk},")

    page.reload()
    expect(page.locator(".field-event_type")).to_contain_text(target.event_type)
    shot(page, "event unchanged after the refused posts")
    assert {e.pk: (e.event_type, e.payload, e.aggregate_version) for e in Event.objects.all()} == before

    # Nor can an auditor replay: the action is not offered, and posting it is refused.
    wait_until(all_done, timeout=PIPELINE_TIMEOUT, what="every routed delivery to be done")
    delivery = Delivery.objects.get(event=target, consumer="audit_log")
    open_deliveries(page)
    expect(page.locator("#result_list")).to_contain_text("audit_log")
    expect(page.locator("select[name=action] option", has_text="Replay")).to_have_count(0)
    shot(page, "deliveries without the replay action")
    replay_post = page.request.post(
        "/admin/outbox/delivery/",
        form={
            "csrfmiddlewaretoken": token,
            "action": "replay_deliveries",
            "_selected_action": str(delivery.pk),
            "confirm": "yes",
            "reason": "an auditor should not be able to",
            "force": "on",
        },
        headers={"Referer": system.base_url + "/admin/outbox/delivery/"},
        max_redirects=0,
    )
    assert replay_post.status == 403, replay_post.text()[:500]
    assert not Replay.objects.exists()
    assert Delivery.objects.get(pk=delivery.pk).publications == delivery.publications


def test_operator_replays_a_dead_delivery_with_a_reason_and_the_worker_applies_it(
    system: System, page: Page, shot: Screenshots, customer: Customer, products: list[Product]
) -> None:
    """An operator filters the deliveries to the dead one, replays it with a reason after the
    confirmation page, and watches it become done: the worker ran the audit log for it again,
    and the replay is recorded with who, why and what."""
    order = services.order_create(customer=customer, lines=[services.LineRequest(products[0].sku, 1)], place=True)
    wait_until(all_done, timeout=PIPELINE_TIMEOUT, what="every routed delivery to be done")
    placed = Event.objects.get(aggregate_type="order", aggregate_id=str(order.pk), event_type="order.placed")
    wait_until(
        lambda: audit_lines_for(placed.pk, system.worker.output()) == 1,
        timeout=PIPELINE_TIMEOUT,
        what="the placement's audit line",
    )
    # Deterministically dead: as if the audit log had failed on every attempt.
    assert (
        Delivery.objects.filter(event=placed, consumer="audit_log").update(
            status=Delivery.Status.DEAD, attempts=6, last_error="test: the audit disk was full"
        )
        == 1
    )
    dead = Delivery.objects.get(event=placed, consumer="audit_log")
    user = user_with("otto", group=OPERATORS)
    log_in(page, shot, user)

    open_deliveries(page)
    page.locator("#changelist-filter").get_by_role("link", name="Dead", exact=True).click()
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text("audit_log")
    expect(rows).to_contain_text("test: the audit disk was full")
    shot(page, "dead deliveries")

    rows.locator(f"input[name=_selected_action][value='{dead.pk}']").check()
    page.select_option("select[name=action]", label="Replay selected deliveries")
    page.click("button[name=index]")
    expect(page.locator("h1")).to_have_text("Replay deliveries")
    expect(page.locator("#replay-preview")).to_contain_text("1 delivery selected")
    expect(page.locator("#replay-preview")).to_contain_text("1 to audit_log")
    expect(page.locator("#replay-deliveries tbody tr")).to_have_count(1)
    expect(page.locator("#replay-deliveries tbody tr")).to_contain_text("order.placed")
    reason = "The audit log's disk was full; space freed, so the line can be written now."
    page.fill("#id_reason", reason)
    shot(page, "replay confirmation")
    page.click("input[type=submit][value='Send again']")

    expect(page.locator("ul.messagelist li.success")).to_contain_text("sent 1 delivery again (audit_log: 1)")
    shot(page, "replay sent")
    page.goto(f"/admin/outbox/delivery/{dead.pk}/change/")
    status = page.locator(".field-status .readonly")
    reload_until(
        page,
        lambda: status.inner_text().strip().lower() == "done",
        timeout=PIPELINE_TIMEOUT,
        what="the replayed delivery to be done",
    )
    shot(page, "delivery done")

    dead.refresh_from_db()
    assert dead.status == Delivery.Status.DONE
    wait_until(
        lambda: audit_lines_for(placed.pk, system.worker.output()) == 2,
        timeout=PIPELINE_TIMEOUT,
        what="the worker's second audit line for the replayed event",
    )
    record = Replay.objects.get()
    assert record.reason == reason
    assert record.requested_by == "user:otto"
    assert record.source == "admin"
    assert list(record.items.values_list("event_id", "consumer", "previous_status")) == [
        (placed.pk, "audit_log", "dead")
    ]
