# toolclash's Locust master and workers as a container (docker-compose.yml builds it for `master` and `worker`).
FROM python:3.11.9-slim-bookworm
WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt
COPY toolclash ./toolclash
COPY users ./users
COPY checks ./checks
COPY locustfiles ./locustfiles
COPY prometheus ./prometheus
ENV PYTHONUNBUFFERED=1
EXPOSE 8089 5557 9646
ENTRYPOINT ["locust"]
CMD ["-f", "locustfiles/mixed.py", "--help"]
